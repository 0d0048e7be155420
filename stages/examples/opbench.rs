//! A fixed amount of one `pipe bench` workload, for profiling: `perf record` over a run
//! whose length does not depend on the machine's speed, with the allocator the binary uses.
//!
//!     cargo build --release -p stages --example opbench
//!     MIMALLOC_PURGE_DELAY=-1 perf record target/release/examples/opbench resnet32_train 5
//!
//! `pipe` keeps freed memory (`mi_option_set(purge_delay, -1)` in its main): the variable
//! does the same here, or the profile shows page zeroing `pipe` does not pay.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(reps)) = (args.get(1).cloned(), args.get(2).and_then(|r| r.parse::<usize>().ok())) else {
        eprintln!("usage: opbench WORKLOAD REPETITIONS (workloads: {})", stages::bench::WORKLOADS.join(", "));
        std::process::exit(2);
    };
    let Some(mut w) = stages::bench::workloads(&|n| n == name).unwrap().pop() else {
        eprintln!("no workload {name}; expected one of {}", stages::bench::WORKLOADS.join(", "));
        std::process::exit(2);
    };
    w.run_once().unwrap();
    let t = std::time::Instant::now();
    let mut items = 0;
    for _ in 0..reps {
        items += w.run_once().unwrap();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("{name}: {items} items in {dt:.2}s = {:.1}/s", items as f64 / dt);
}
