//! `ltrain presets`: the shipped settings of the paper and what the paper reports for each.

use anyhow::Result;
use ltrain::presets::list_presets;

pub fn run() -> Result<()> {
    println!("{:<28} {:<14} description", "preset", "paper top-1/ECE");
    for p in list_presets() {
        let paper = p.paper.as_ref().map_or("-".to_string(), |r| {
            format!(
                "{:.1}/{}",
                r.top1,
                r.ece.map_or("-".to_string(), |e| format!("{e:.1}"))
            )
        });
        println!("{:<28} {:<14} {}", p.name, paper, p.description);
    }
    println!("\nuse: ltrain train --preset NAME [--data-dir ...] --out DIR");
    Ok(())
}
