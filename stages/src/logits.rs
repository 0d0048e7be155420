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

/// How a net scores a sample made for class k, in the per-class binary view of the ICN
/// papers: Eq. 9 scores a pseudo-negative of class k by ln(1 + exp(f_k(x))) alone, i.e.
/// q(+1 | x) = sigmoid(f_k(x)) for "x is a real k", whatever the other logits say. A
/// one-logit (binary) net's f_k is its only logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScore {
    /// f_k(x).
    pub logit: f32,
    /// sigmoid(f_k(x)).
    pub prob: f32,
    /// f_k(x) > 0: classified as a real k (stop option 1).
    pub positive: bool,
    /// argmax_j f_j(x) = k: a much weaker condition for a softmax net, which holds while
    /// f_k is deeply negative once the classifier has learned to push samples down.
    pub top: bool,
}

pub fn class_score(row: &[f32], k: usize, binary: bool) -> ClassScore {
    let logit = if binary { row[0] } else { row[k] };
    let positive = logit > 0.0;
    ClassScore { logit, prob: sigmoid(logit), positive, top: if binary { positive } else { argmax(row) == k } }
}

fn sigmoid(z: f32) -> f32 {
    (1.0 / (1.0 + (-(z as f64)).exp())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_f_k_alone_and_argmax_is_a_separate_fact() {
        // class 1 is the top logit but f_1 < 0: on top, not positive
        let s = class_score(&[-9.0, -2.0, -7.5], 1, false);
        assert_eq!((s.logit, s.positive, s.top), (-2.0, false, true));
        assert!((s.prob - 0.119_202_92).abs() < 1e-6);
        // f_2 > 0 while another class is higher: positive, not on top
        let s = class_score(&[4.0, 0.0, 0.5], 2, false);
        assert_eq!((s.positive, s.top), (true, false));
        assert!((s.prob - 0.622_459_3).abs() < 1e-6);
        let b = class_score(&[0.25], 3, true);
        assert_eq!((b.logit, b.positive, b.top), (0.25, true, true));
        assert_eq!(class_score(&[-30.0, 0.0], 0, false).prob, (1.0 / (1.0 + 30f64.exp())) as f32);
    }
}
