//! probe
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
fn shmem() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Shmem:"))
        .unwrap()
        .to_string()
}
fn main() -> Result<(), mproc::Error> {
    let (a, b) = mproc::pipe::<Vec<u8>>()?;
    println!("before: {}", shmem());
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let h = std::thread::spawn(move || {
        for i in 0..30u8 {
            a.send(vec![i; 10 << 20]).unwrap();
            s2.fetch_add(1, Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "sent {} before blocking; {}",
        sent.load(Ordering::SeqCst),
        shmem()
    );
    let t = Instant::now();
    for i in 0..30u8 {
        let v = b.recv()?;
        assert!(v.len() == 10 << 20 && v.iter().all(|&x| x == i));
    }
    h.join().unwrap();
    println!("received all 30 in {:?}; {}", t.elapsed(), shmem());
    Ok(())
}
