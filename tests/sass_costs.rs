//! scripts/sass-costs.py's SASS reading on a hand-written listing (tests/fixtures/loops.sass), whose
//! counts were worked out by hand: the loop from the backward branch, the end-of-code `BRA self`
//! ignored, instructions by class, FMAs per FFMA (1) and per HMMA.1688 (16 x 8 x 8 / 32 = 32).

use std::collections::BTreeMap;
use std::process::Command;

fn parse(fixture: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/sass-costs.py"))
        .arg("--parse")
        .arg(format!("{root}/tests/fixtures/{fixture}"))
        .output()
        .expect("python3 runs scripts/sass-costs.py");
    assert!(
        out.status.success(),
        "scripts/sass-costs.py --parse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let row = header
                .iter()
                .zip(&f)
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect();
            (f[0].to_string(), row)
        })
        .collect()
}

fn check(row: &BTreeMap<String, String>, expected: &[(&str, &str)]) {
    for (column, value) in expected {
        assert_eq!(row[*column], *value, "column {column} of {row:?}");
    }
}

#[test]
fn the_sass_reader_finds_loops_and_counts_them_by_class() {
    let rows = parse("loops.sass");
    // 0x20..0xc0: LDG, STS, BAR, LDS, LDS.64, 2 FFMA, IMAD, ISETP, BAR, BRA.
    check(
        &rows["ffma_tiled"],
        &[
            ("unit", "ffma"),
            ("loop", "0x20-0xc0"),
            ("instr", "11.0"),
            ("ffma", "2.00"),
            ("lds", "2.00"),
            ("ldg", "1.00"),
            ("sts", "1.00"),
            ("int", "2.00"),
            ("other", "3.00"),
            ("fma", "2"),
            ("instr_per_fma", "5.50"),
            ("smem_loads_per_op", "1.00"),
        ],
    );
    // 0x10..0xa0: LDGSTS, 2 LDSM, 2 HMMA.1688 TF32, UIADD3, VIADD, ISETP, 2 BRA.
    check(
        &rows["hmma_loop"],
        &[
            ("unit", "tf32"),
            ("loop", "0x10-0xa0"),
            ("instr", "10.0"),
            ("hmma", "2.00"),
            ("ldsm", "2.00"),
            ("ldgsts", "1.00"),
            ("int", "3.00"),
            ("other", "2.00"),
            ("fma", "64"),
            ("instr_per_fma", "0.16"),
            ("smem_loads_per_op", "1.00"),
        ],
    );
    check(&rows["no_loop"], &[("loop", "-"), ("fma", "-")]);
}
