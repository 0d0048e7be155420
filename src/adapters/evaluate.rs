//! `evaluate`: error of a round's classifier on validation and test, overall and per class,
//! as a tidy table (round, split, class, metric, value, count); class -1 is all classes.

use super::{read_set, NetParams};
use crate::executor::StageIo;
use crate::table::{to_parquet, Column};
use anyhow::Result;
use serde::Deserialize;
use serde_json::json;
use stages::candle::Device;
use stages::evaluate::{predict, ClassErrors};

#[derive(Deserialize)]
struct Params {
    round: u32,
    batch_size: usize,
    net: NetParams,
}

pub fn run(io: &mut StageIo, device: &Device) -> Result<()> {
    let p: Params = io.params()?;
    let net = p.net.load(&io.read("checkpoint")?, device)?;
    let mut rows: (Vec<String>, Vec<i32>, Vec<f64>, Vec<u64>) = Default::default();
    let mut line = Vec::new();
    for split in ["validation", "test"] {
        let (x, y) = read_set(io, split)?;
        let pb = io.progress(1, &format!("{split} error"));
        let predicted = predict(net.as_ref(), &x, p.net.shape(), p.batch_size, device)?;
        pb.finish_and_clear();
        let e = ClassErrors::new(&predicted, &y, p.net.num_classes);
        let mut push = |class: i32, value: f64, count: usize| {
            rows.0.push(split.to_string());
            rows.1.push(class);
            rows.2.push(value);
            rows.3.push(count as u64);
        };
        push(-1, e.error(), e.count.iter().sum());
        for k in 0..p.net.num_classes {
            push(k as i32, e.class_error(k), e.count[k]);
        }
        io.summary(&format!("{split}_error"), json!(e.error()));
        line.push(format!("{split} error {:.2}%", 100.0 * e.error()));
    }
    io.summary("line", json!(line.join("  ")));
    let n = rows.0.len();
    let table = to_parquet(vec![
        ("round", Column::U32(vec![p.round; n])),
        ("split", Column::Str(rows.0)),
        ("class", Column::I32(rows.1)),
        ("metric", Column::Str(vec!["error".into(); n])),
        ("value", Column::F64(rows.2)),
        ("count", Column::U64(rows.3)),
    ])?;
    io.write("metrics.parquet", &table)?;
    Ok(())
}
