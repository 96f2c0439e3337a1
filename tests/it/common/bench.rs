//! Running the `rstargz-bench` binary the way its CI smoke tests do.

use std::path::Path;
use std::process::Command;

/// Runs `rstargz-bench ARGS --rstargz <this build> --out OUT --work WORK`,
/// asserting that it succeeded (its output in the failure message), and
/// returns the `report.json` it wrote to `out`.
pub fn run_bench(args: &[&str], out: &Path, work: &Path) -> serde_json::Value {
    let rstargz = Path::new(env!("CARGO_BIN_EXE_rstargz"));
    let bench = rstargz.with_file_name("rstargz-bench");
    assert!(
        bench.is_file(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bench.display()
    );
    let run = Command::new(&bench)
        .args(args)
        .arg("--rstargz")
        .arg(rstargz)
        .arg("--out")
        .arg(out)
        .arg("--work")
        .arg(work)
        .output()
        .expect("run rstargz-bench");
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read(out.join("report.json")).expect("the bench's report.json");
    serde_json::from_slice(&report).expect("report.json is JSON")
}
