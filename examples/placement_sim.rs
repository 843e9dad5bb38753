//! Placement at scale, simulated (issue #13): 1,000 nodes of mixed capacity, 10 control
//! planes, 100,000 rooms placed and released in a churn on virtual time, for each strategy,
//! with the nodes read before every placement (as the Redis store does) and with views up
//! to one health interval stale. The placement code and the store are the real ones
//! (`switchyard_controlplane::cluster::sim` says what is modelled).
//!
//! `cargo run --release --example placement_sim -- [--nodes N] [--planes N] [--rooms N]
//! [--interval-ms MS] [--seed N] [--strategy least_loaded|round_robin|consistent_hash]
//! [--views fresh|stale]` (defaults 1000, 10, 100000, 5000, 1, every strategy, both).
//! Prints one line per run; exits 1 if any run over-committed a node.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use switchyard_controlplane::cluster::sim::{self, Setup};
use switchyard_controlplane::cluster::Strategy;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 10)]
    planes: usize,
    #[arg(long, default_value_t = 100_000)]
    rooms: usize,
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One strategy; default: all three.
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Only one way of reading the nodes: `fresh` (before every placement, as the Redis
    /// store does) or `stale` (at each control plane's health round); default: both.
    #[arg(long)]
    views: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let strategies = match args.strategy {
        Some(s) => vec![s],
        None => vec![
            Strategy::LeastLoaded,
            Strategy::RoundRobin,
            Strategy::ConsistentHash,
        ],
    };
    let views: Vec<bool> = match args.views.as_deref() {
        None => vec![false, true],
        Some("fresh") => vec![false],
        Some("stale") => vec![true],
        Some(other) => {
            eprintln!("--views {other:?}: fresh or stale");
            return ExitCode::from(2);
        }
    };
    println!(
        "{} nodes, {} control planes, {} rooms, health interval {} ms, seed {}",
        args.nodes, args.planes, args.rooms, args.interval_ms, args.seed
    );
    println!(
        "{:<16} {:<6} {:>7} {:>7} {:>7} {:>6} | {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} | {:>9} {:>6}",
        "strategy",
        "views",
        "placed",
        "refused",
        "rereads",
        "over",
        "worst",
        "mean",
        "at µ",
        "vs avg",
        "end",
        "after",
        "placing/s",
        "wall s"
    );
    let mut ok = true;
    for stale_views in views {
        for &strategy in &strategies {
            let started = Instant::now();
            let r = sim::run(&Setup {
                nodes: args.nodes,
                control_planes: args.planes,
                rooms: args.rooms,
                health_interval_ms: args.interval_ms,
                strategy,
                seed: args.seed,
                stale_views,
            });
            ok &= r.over_commit == 0;
            println!(
                "{:<16} {:<6} {:>7} {:>7} {:>7} {:>6} | {:>6.3} {:>6.3} {:>6.3} {:>6.3} | {:>6.3} {:>6.3} | {:>9.0} {:>6.1}",
                strategy.name(),
                if stale_views { "stale" } else { "fresh" },
                r.placed,
                r.refused,
                r.rereads,
                r.over_commit,
                r.worst_ratio,
                r.mean_ratio,
                r.share_at_worst,
                r.worst_vs_node_average,
                r.end_ratio,
                r.worst_after_surge,
                r.placements_per_s(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "over: checks that found a node over capacity or off its rooms' sum (or not back to 0 \
         at the end). worst, mean: the \
         fullest node's share over the cluster's share at each health round of the steady \
         churn (worst, average), at µ: the cluster's share then, vs avg: the worst against \
         the plain average of the nodes' shares. end, after: the ratio at the last round \
         while rooms arrived, and its worst after the surge. placing/s: rank + commit, one \
         core."
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
