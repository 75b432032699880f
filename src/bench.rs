//! `cpis bench`: measures the suite against the framework's and the
//! database's own ceilings, in one run. (Being written.)

use clap::Args;

/// Options of `cpis bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Small sizes and short durations: a smoke test for CI.
    #[arg(long)]
    pub quick: bool,
}

/// Runs the benchmarks.
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("cpis bench is not implemented yet")
}
