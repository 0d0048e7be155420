//! What a net's logits say about a sample: its top class, and how it scores a class.
//! Shared by the losses, synthesis, evaluation and the attack, none of which owns it.

/// The index of the largest logit; the first of ties.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// How a classifier sees a sample made for class k, from its logits: (logit of k,
/// probability of k, classified as k). A one-logit (binary) net scores the positive class
/// by its only logit: sigmoid, and "classified" when it is positive.
pub fn class_score(row: &[f32], k: usize, binary: bool) -> (f32, f32, bool) {
    if binary {
        (row[0], 1.0 / (1.0 + (-row[0]).exp()), row[0] > 0.0)
    } else {
        (row[k], softmax_at(row, k), argmax(row) == k)
    }
}

fn softmax_at(row: &[f32], k: usize) -> f32 {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = row.iter().map(|v| ((v - m) as f64).exp()).sum();
    (((row[k] - m) as f64).exp() / z) as f32
}
