//! CPU placement for the launcher benchmarks: the load generator on one CPU, the servers on
//! the others, so both sides of a comparison get the same CPUs.

/// Restricts the calling thread (and what it spawns later) to `cpus`.
pub fn pin_to(cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it and nothing else.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs this process may use.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `pin_to`; sched_getaffinity writes only into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Splits the CPUs into (client, servers) unless `BENCH_PIN=0` or there is only one; pins
/// this thread to the servers' CPUs (so servers spawned now inherit them) and returns the
/// split, or `None` when not pinning.
pub fn pin_servers() -> Option<(Vec<usize>, Vec<usize>)> {
    let cpus = allowed_cpus();
    let pin = std::env::var("BENCH_PIN").map_or(true, |v| v != "0") && cpus.len() >= 2;
    if !pin {
        return None;
    }
    let (client, servers) = (vec![cpus[0]], cpus[1..].to_vec());
    assert!(pin_to(&servers), "cannot pin the servers");
    Some((client, servers))
}
