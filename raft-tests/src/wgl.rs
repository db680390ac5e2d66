//! A Wing-Gong-Lowe linearizability checker (the algorithm Porcupine and Knossos use),
//! generic over a sequential model.
//!
//! The history becomes a doubly linked list of call and return events in time order.
//! The search repeatedly tries to linearize a pending call whose effect the model accepts
//! with the observed output, "lifting" it out of the list; when it reaches a return whose
//! call is not yet linearized it backtracks. A cache of (linearized set, model state)
//! prunes states already explored, which is what makes it usable in practice.
//!
//! Operations with an unknown outcome get a return event at +infinity and their output is
//! unconstrained: they may take effect at any point after their invocation, or never
//! (linearizing them last is the same as never, as nothing observes them afterwards).

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + std::fmt::Debug;
    type Op: std::fmt::Debug;
    /// The observed output; `None` for an operation whose outcome is unknown.
    type Out: std::fmt::Debug;

    fn init(&self) -> Self::State;
    /// The state after `op` if the model can produce `out` from `state` (any output when
    /// `out` is None); `None` if it cannot.
    fn step(
        &self,
        state: &Self::State,
        id: usize,
        op: &Self::Op,
        out: Option<&Self::Out>,
    ) -> Option<Self::State>;
}

/// One operation for the checker.
#[derive(Debug, Clone)]
pub struct Operation<O, R> {
    /// Caller's id (reported back in a violation).
    pub id: usize,
    pub call: u64,
    /// `None`: unknown outcome, return at +infinity.
    pub ret: Option<u64>,
    pub op: O,
    pub out: Option<R>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history. `stuck_at` is the id of the operation whose return
    /// could not be passed at the deepest point of the search; `prefix` are the ids
    /// linearized before it at that point.
    Violation {
        stuck_at: usize,
        prefix: Vec<usize>,
        state: String,
    },
    /// The search ran past its budget.
    GaveUp {
        explored: u64,
    },
}

#[derive(Clone, Copy)]
struct Node {
    /// Index into ops.
    op: usize,
    is_call: bool,
    /// For a call: the index of its return node.
    matched: usize,
    prev: usize,
    next: usize,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// Checks `ops` against `model` within `budget` of wall time.
pub fn check<M: Model>(model: &M, ops: &[Operation<M::Op, M::Out>], budget: Duration) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Events: (time, is_return, op index). Calls sort before returns at equal times,
    // which treats touching operations as concurrent (the permissive reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, false, i));
        events.push((o.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort_by_key(|&(t, r, i)| (t, r, i));
    // Node 0 is the list head; events follow.
    let mut nodes: Vec<Node> = Vec::with_capacity(events.len() + 1);
    nodes.push(Node {
        op: NIL,
        is_call: false,
        matched: NIL,
        prev: NIL,
        next: 1,
    });
    let mut ret_node = vec![NIL; ops.len()];
    for (k, &(_, is_ret, i)) in events.iter().enumerate() {
        let idx = k + 1;
        nodes.push(Node {
            op: i,
            is_call: !is_ret,
            matched: NIL,
            prev: idx - 1,
            next: if k + 1 < events.len() { idx + 1 } else { NIL },
        });
        if is_ret {
            ret_node[i] = idx;
        }
    }
    for n in nodes.iter_mut().skip(1) {
        if n.is_call {
            n.matched = ret_node[n.op];
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut entry = nodes[HEAD].next;
    let started = Instant::now();
    let mut explored: u64 = 0;
    // Deepest point reached, for the violation report.
    let mut best_depth = 0usize;
    let mut best: (usize, Vec<usize>, String) = (0, Vec::new(), String::new());

    let lift = |nodes: &mut Vec<Node>, e: usize| {
        let (p, n) = (nodes[e].prev, nodes[e].next);
        nodes[p].next = n;
        if n != NIL {
            nodes[n].prev = p;
        }
        let m = nodes[e].matched;
        let (mp, mn) = (nodes[m].prev, nodes[m].next);
        nodes[mp].next = mn;
        if mn != NIL {
            nodes[mn].prev = mp;
        }
    };
    let unlift = |nodes: &mut Vec<Node>, e: usize| {
        let m = nodes[e].matched;
        let (mp, mn) = (nodes[m].prev, nodes[m].next);
        nodes[mp].next = m;
        if mn != NIL {
            nodes[mn].prev = m;
        }
        let (p, n) = (nodes[e].prev, nodes[e].next);
        nodes[p].next = e;
        if n != NIL {
            nodes[n].prev = e;
        }
    };

    loop {
        if nodes[HEAD].next == NIL {
            return Verdict::Linearizable;
        }
        explored += 1;
        if explored.is_multiple_of(4096) && started.elapsed() > budget {
            return Verdict::GaveUp { explored };
        }
        let n = nodes[entry];
        if n.is_call {
            let o = &ops[n.op];
            let next_state = model.step(&state, o.id, &o.op, o.out.as_ref());
            let mut advanced = false;
            if let Some(s) = next_state {
                let mut lin = linearized.clone();
                lin[n.op / 64] |= 1 << (n.op % 64);
                if cache.insert((lin.clone(), s.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, s)));
                    linearized = lin;
                    lift(&mut nodes, entry);
                    entry = nodes[HEAD].next;
                    advanced = true;
                    if stack.len() > best_depth {
                        best_depth = stack.len();
                    }
                }
            }
            if !advanced {
                entry = n.next;
            }
        } else {
            // A return whose call is not linearized: backtrack.
            if stack.len() >= best_depth {
                best_depth = stack.len();
                best = (
                    ops[n.op].id,
                    stack.iter().map(|&(e, _)| ops[nodes[e].op].id).collect(),
                    format!("{state:?}"),
                );
            }
            let Some((e, s)) = stack.pop() else {
                return Verdict::Violation {
                    stuck_at: best.0,
                    prefix: best.1,
                    state: best.2,
                };
            };
            state = s;
            let op = nodes[e].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut nodes, e);
            entry = nodes[e].next;
        }
        if entry == NIL && nodes[HEAD].next != NIL {
            // Only reachable if every remaining event were a call, which cannot happen
            // (each call's return follows it); treat as exhausted.
            let Some((e, s)) = stack.pop() else {
                return Verdict::Violation {
                    stuck_at: best.0,
                    prefix: best.1,
                    state: best.2,
                };
            };
            state = s;
            let op = nodes[e].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut nodes, e);
            entry = nodes[e].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single register: write(v) / read() -> v.
    struct Register;
    #[derive(Debug)]
    enum RegOp {
        W(u32),
        R,
    }
    impl Model for Register {
        type State = u32;
        type Op = RegOp;
        type Out = u32;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, s: &u32, _: usize, op: &RegOp, out: Option<&u32>) -> Option<u32> {
            match op {
                RegOp::W(v) => Some(*v),
                RegOp::R => match out {
                    None => Some(*s),
                    Some(o) if o == s => Some(*s),
                    Some(_) => None,
                },
            }
        }
    }

    fn op(
        id: usize,
        call: u64,
        ret: Option<u64>,
        op: RegOp,
        out: Option<u32>,
    ) -> Operation<RegOp, u32> {
        Operation {
            id,
            call,
            ret,
            op,
            out,
        }
    }

    const B: Duration = Duration::from_secs(10);

    #[test]
    fn concurrent_write_and_read_of_either_value_is_linearizable() {
        let h = vec![
            op(0, 0, Some(10), RegOp::W(1), Some(0)),
            op(1, 5, Some(15), RegOp::R, Some(1)),
            op(2, 6, Some(16), RegOp::R, Some(0)),
        ];
        assert_eq!(check(&Register, &h, B), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_is_a_violation() {
        let h = vec![
            op(0, 0, Some(10), RegOp::W(1), Some(0)),
            op(1, 20, Some(30), RegOp::R, Some(0)),
        ];
        assert!(matches!(
            check(&Register, &h, B),
            Verdict::Violation { stuck_at: 1, .. }
        ));
    }

    #[test]
    fn read_that_goes_back_in_time_is_a_violation() {
        // r1 sees the new value, then a later r2 sees the old one.
        let h = vec![
            op(0, 0, Some(100), RegOp::W(1), Some(0)),
            op(1, 10, Some(20), RegOp::R, Some(1)),
            op(2, 30, Some(40), RegOp::R, Some(0)),
        ];
        assert!(matches!(check(&Register, &h, B), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let late = vec![
            op(0, 0, None, RegOp::W(7), None),
            op(1, 10, Some(20), RegOp::R, Some(0)),
            op(2, 30, Some(40), RegOp::R, Some(7)),
        ];
        assert_eq!(check(&Register, &late, B), Verdict::Linearizable);
        let never = vec![
            op(0, 0, None, RegOp::W(7), None),
            op(1, 10, Some(20), RegOp::R, Some(0)),
        ];
        assert_eq!(check(&Register, &never, B), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let early = vec![
            op(1, 0, Some(5), RegOp::R, Some(7)),
            op(0, 10, None, RegOp::W(7), None),
        ];
        assert!(matches!(
            check(&Register, &early, B),
            Verdict::Violation { .. }
        ));
    }
}
