//! Planning where chain replicas move when data servers are added or drained (issue 23).
//!
//! Pure code over a picture of the cluster (each chain's members and bytes, each server's
//! weight): no IO, no clock, no state machine. The leader will turn a plan into chain
//! changes one move at a time (the new member joins as `syncing`, catches up, becomes a
//! member, and only then does the old one leave, so R never drops during a move). The
//! placement simulator (`placement-sim` in `benches/`) runs these same functions over
//! 10 to 1,000 servers; its table and the reasoning are in
//! `docs/design/0014-placement-planner.md`.
//!
//! A server's *share* is its weight over the sum of weights; its *target* is that share
//! of all replica bytes; its *ratio* is its load over its target. Balanced within
//! `tolerance` means every ratio lies in `1 ± tolerance`.

use cirrus_types::{ChainId, ServerId};
use std::collections::BTreeMap;

/// One chain as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLoad {
    pub id: ChainId,
    /// Every server holding a full copy (head first); a move keeps the order.
    pub members: Vec<ServerId>,
    /// Bytes of one copy of the chain's objects.
    pub bytes: u64,
}

/// Copy `chain`'s replica from `from` to `to`, then drop it from `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub chain: ChainId,
    pub from: ServerId,
    pub to: ServerId,
    pub bytes: u64,
}

/// Why no plan can be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("server {0} is not among the weighted servers")]
    UnknownServer(ServerId),
    #[error(
        "chain {chain} cannot leave server {server}: every other server already holds \
         it, so its replica count would drop (add a server first)"
    )]
    NowhereToGo { chain: ChainId, server: ServerId },
    #[error("no server has a positive weight")]
    NoWeight,
}

/// Replica bytes held by each weighted server (0 for one in no chain).
pub fn loads(chains: &[ChainLoad], weights: &BTreeMap<ServerId, u64>) -> BTreeMap<ServerId, u64> {
    let mut l: BTreeMap<ServerId, u64> = weights.keys().map(|&s| (s, 0)).collect();
    for c in chains {
        for m in &c.members {
            *l.entry(*m).or_default() += c.bytes;
        }
    }
    l
}

/// The largest distance of any server's ratio from 1 (0.0 is perfectly even).
pub fn spread(chains: &[ChainLoad], weights: &BTreeMap<ServerId, u64>) -> f64 {
    let Some(g) = Grid::new(chains, weights) else {
        return 0.0;
    };
    (0..g.ids.len())
        .map(|i| (g.ratio(i) - 1.0).abs())
        .fold(0.0, f64::max)
}

/// Applies moves to the picture (what the chain table looks like once they are done).
pub fn apply(chains: &mut [ChainLoad], moves: &[Move]) {
    for mv in moves {
        if let Some(c) = chains.iter_mut().find(|c| c.id == mv.chain) {
            if let Some(m) = c.members.iter_mut().find(|m| **m == mv.from) {
                *m = mv.to;
            }
        }
    }
}

/// Moves every replica off `server`, each to the server with the lowest ratio afterwards
/// that does not hold that chain yet (largest chains first, so the big pieces land
/// where there is the most room). Moves exactly the bytes `server` held: the minimum.
/// `weights` must not include `server` (it takes no new data).
pub fn plan_drain(
    chains: &[ChainLoad],
    weights: &BTreeMap<ServerId, u64>,
    server: ServerId,
) -> Result<Vec<Move>, PlanError> {
    let mut w = weights.clone();
    w.remove(&server);
    let mut g = Grid::new(chains, &w).ok_or(PlanError::NoWeight)?;
    let mut held: Vec<usize> = (0..chains.len())
        .filter(|&c| chains[c].members.contains(&server))
        .collect();
    held.sort_by_key(|&c| (std::cmp::Reverse(chains[c].bytes), chains[c].id));
    let mut moves = Vec::with_capacity(held.len());
    for c in held {
        let b = chains[c].bytes;
        let to = (0..g.ids.len())
            .filter(|&s| !g.members[c].contains(&s))
            .min_by(|&a, &z| {
                let ra = (g.load[a] + b as f64) / g.target[a];
                let rz = (g.load[z] + b as f64) / g.target[z];
                ra.total_cmp(&rz).then(a.cmp(&z))
            })
            .ok_or(PlanError::NowhereToGo {
                chain: chains[c].id,
                server,
            })?;
        g.load[to] += b as f64;
        g.members[c].push(to);
        moves.push(Move {
            chain: chains[c].id,
            from: server,
            to: g.ids[to],
            bytes: b,
        });
    }
    Ok(moves)
}

/// Moves replicas from the server with the highest ratio to servers with low ones until
/// every ratio lies in `1 ± tolerance`, no move helps any more, or `max_moves` moves are
/// planned. A move is taken only if it lowers the sum of squared distances from the
/// targets, so planning always ends and never moves a replica back and forth. Among the
/// moves that help, one that overshoots neither side is preferred, largest first (the
/// fewest moves for the bytes); otherwise the smallest that still helps. A server
/// that has just been added (load 0) draws replicas from the most loaded ones: that is
/// how an added server gets its share.
pub fn plan_rebalance(
    chains: &[ChainLoad],
    weights: &BTreeMap<ServerId, u64>,
    tolerance: f64,
    max_moves: usize,
) -> Result<Vec<Move>, PlanError> {
    let mut g = Grid::new(chains, weights).ok_or(PlanError::NoWeight)?;
    for c in chains {
        for m in &c.members {
            if !weights.contains_key(m) {
                return Err(PlanError::UnknownServer(*m));
            }
        }
    }
    let n = g.ids.len();
    let mut moves = Vec::new();
    let mut by_ratio: Vec<usize> = (0..n).collect();
    while moves.len() < max_moves {
        by_ratio.sort_by(|&a, &z| g.ratio(a).total_cmp(&g.ratio(z)).then(a.cmp(&z)));
        let (lo0, hi) = (by_ratio[0], by_ratio[n - 1]);
        if g.ratio(hi) <= 1.0 + tolerance && g.ratio(lo0) >= 1.0 - tolerance {
            break;
        }
        let excess = g.load[hi] - g.target[hi];
        // The receivers with the most room first; a few suffice (the rest are fuller).
        let found = by_ratio.iter().take(16.min(n)).find_map(|&lo| {
            if lo == hi {
                return None;
            }
            let deficit = g.target[lo] - g.load[lo];
            let gain_limit = excess + deficit;
            if gain_limit <= 0.0 {
                return None;
            }
            let fits = |b: f64| b <= excess.min(deficit).max(0.0);
            let mut best: Option<(usize, f64)> = None; // no overshoot: largest
            let mut fallback: Option<(usize, f64)> = None; // helps: smallest
            for &c in &g.chains_of[hi] {
                let b = chains[c].bytes as f64;
                if b <= 0.0 || b >= gain_limit || g.members[c].contains(&lo) {
                    continue;
                }
                if fits(b) {
                    if best.is_none_or(|(_, x)| b > x) {
                        best = Some((c, b));
                    }
                } else if fallback.is_none_or(|(_, x)| b < x) {
                    fallback = Some((c, b));
                }
            }
            best.or(fallback).map(|(c, _)| (c, lo))
        });
        let Some((c, lo)) = found else { break };
        let b = chains[c].bytes;
        g.load[hi] -= b as f64;
        g.load[lo] += b as f64;
        g.chains_of[hi].retain(|&x| x != c);
        g.chains_of[lo].push(c);
        for m in g.members[c].iter_mut() {
            if *m == hi {
                *m = lo;
            }
        }
        moves.push(Move {
            chain: chains[c].id,
            from: g.ids[hi],
            to: g.ids[lo],
            bytes: b,
        });
    }
    Ok(moves)
}

/// Index-based working copy: servers by position in `ids`, chains by position in the
/// caller's slice.
struct Grid {
    ids: Vec<ServerId>,
    load: Vec<f64>,
    target: Vec<f64>,
    /// Server positions holding each chain (members not weighted are left out).
    members: Vec<Vec<usize>>,
    chains_of: Vec<Vec<usize>>,
}

impl Grid {
    fn new(chains: &[ChainLoad], weights: &BTreeMap<ServerId, u64>) -> Option<Self> {
        let ids: Vec<ServerId> = weights
            .iter()
            .filter(|(_, &w)| w > 0)
            .map(|(&s, _)| s)
            .collect();
        if ids.is_empty() {
            return None;
        }
        let pos: BTreeMap<ServerId, usize> = ids.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        let wsum: f64 = ids.iter().map(|s| weights[s] as f64).sum();
        let total: f64 = chains
            .iter()
            .map(|c| c.bytes as f64 * c.members.len() as f64)
            .sum();
        let mut g = Grid {
            target: ids
                .iter()
                .map(|s| (total * weights[s] as f64 / wsum).max(1.0))
                .collect(),
            load: vec![0.0; ids.len()],
            members: Vec::with_capacity(chains.len()),
            chains_of: vec![Vec::new(); ids.len()],
            ids,
        };
        for (ci, c) in chains.iter().enumerate() {
            let ms: Vec<usize> = c
                .members
                .iter()
                .filter_map(|m| pos.get(m).copied())
                .collect();
            for &m in &ms {
                g.load[m] += c.bytes as f64;
                g.chains_of[m].push(ci);
            }
            g.members.push(ms);
        }
        Some(g)
    }

    fn ratio(&self, i: usize) -> f64 {
        self.load[i] / self.target[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sid(i: u64) -> ServerId {
        ServerId(i)
    }

    /// `n` servers of weight 1, `k` chains per server striped over them as the chain
    /// table places them (head i, then the next servers), chain j holding `sizes[j]`.
    fn cluster(n: u64, r: usize, sizes: &[u64]) -> (Vec<ChainLoad>, BTreeMap<ServerId, u64>) {
        let chains = sizes
            .iter()
            .enumerate()
            .map(|(j, &b)| ChainLoad {
                id: ChainId(j as u32 + 1),
                members: (0..r as u64).map(|i| sid(1 + (j as u64 + i) % n)).collect(),
                bytes: b,
            })
            .collect();
        ((chains), (1..=n).map(|i| (sid(i), 1)).collect())
    }

    fn well_formed(chains: &[ChainLoad], r: usize) {
        for c in chains {
            assert_eq!(c.members.len(), r, "chain {} lost or gained a member", c.id);
            let mut m = c.members.clone();
            m.sort();
            m.dedup();
            assert_eq!(
                m.len(),
                r,
                "chain {} holds one server twice: {:?}",
                c.id,
                c.members
            );
        }
    }

    #[test]
    fn an_added_server_gets_its_share_and_little_else_moves() {
        // 10 servers, 8 equal chains each, R=2: the 11th should take 1/11 of the bytes.
        let (mut chains, mut w) = cluster(10, 2, &vec![1 << 30; 80]);
        w.insert(sid(11), 1);
        let moves = plan_rebalance(&chains, &w, 0.1, 10_000).unwrap();
        let moved: u64 = moves.iter().map(|m| m.bytes).sum();
        let total = 80u64 * 2 * (1 << 30);
        assert!(
            moves.iter().all(|m| m.to == sid(11)),
            "only the new server receives: {moves:?}"
        );
        assert!(
            moved >= total / 11 - (1 << 30) && moved <= total / 11 + (1 << 30),
            "moved {moved}"
        );
        apply(&mut chains, &moves);
        well_formed(&chains, 2);
        assert!(
            spread(&chains, &w) <= 0.1 + 1e-9,
            "spread {}",
            spread(&chains, &w)
        );
    }

    #[test]
    fn a_drain_moves_exactly_what_the_server_held_and_refuses_when_r_would_drop() {
        let (mut chains, w) = cluster(4, 3, &[5, 7, 11, 13, 17, 19, 23, 29]);
        let held = loads(&chains, &w)[&sid(2)];
        let moves = plan_drain(&chains, &w, sid(2)).unwrap();
        assert_eq!(moves.iter().map(|m| m.bytes).sum::<u64>(), held);
        apply(&mut chains, &moves);
        well_formed(&chains, 3);
        assert!(chains.iter().all(|c| !c.members.contains(&sid(2))));
        // With R=3 on three servers, draining one leaves nowhere for its copies.
        let (chains, w) = cluster(3, 3, &[1, 2, 3]);
        assert!(matches!(
            plan_drain(&chains, &w, sid(1)),
            Err(PlanError::NowhereToGo { server, .. }) if server == sid(1)
        ));
    }

    #[test]
    fn members_outside_the_weights_and_zero_weights_are_refused() {
        let (chains, mut w) = cluster(3, 2, &[1, 1, 1]);
        w.remove(&sid(3));
        assert_eq!(
            plan_rebalance(&chains, &w, 0.1, 10),
            Err(PlanError::UnknownServer(sid(3)))
        );
        let zero: BTreeMap<ServerId, u64> = (1..=3).map(|i| (sid(i), 0)).collect();
        assert_eq!(
            plan_rebalance(&chains, &zero, 0.1, 10),
            Err(PlanError::NoWeight)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any cluster, any sizes: a rebalance keeps every chain at R distinct members
        /// and never makes the squared distance from the targets worse.
        #[test]
        fn rebalance_keeps_r_and_never_worsens(
            n in 3u64..24,
            r in 1usize..4,
            sizes in prop::collection::vec(0u64..1_000_000, 1..200),
            added in 0u64..3,
        ) {
            prop_assume!((r as u64) <= n);
            let (mut chains, mut w) = cluster(n, r, &sizes);
            for a in 0..added {
                w.insert(sid(n + 1 + a), 1 + a);
            }
            let before = sq_dev(&chains, &w);
            let moves = plan_rebalance(&chains, &w, 0.05, 100_000).unwrap();
            apply(&mut chains, &moves);
            well_formed(&chains, r);
            prop_assert!(sq_dev(&chains, &w) <= before * (1.0 + 1e-9) + 1e-6);
        }

        /// A drain moves exactly the drained server's bytes, leaves it in no chain, and
        /// keeps R distinct members everywhere (or refuses when R servers would not be left).
        #[test]
        fn drain_is_exact(
            n in 2u64..20,
            r in 1usize..4,
            sizes in prop::collection::vec(0u64..1_000_000, 1..100),
            victim in 1u64..20,
        ) {
            prop_assume!((r as u64) <= n && victim <= n);
            let (mut chains, w) = cluster(n, r, &sizes);
            let held = loads(&chains, &w)[&sid(victim)];
            match plan_drain(&chains, &w, sid(victim)) {
                Ok(moves) => {
                    prop_assert_eq!(moves.iter().map(|m| m.bytes).sum::<u64>(), held);
                    apply(&mut chains, &moves);
                    well_formed(&chains, r);
                    prop_assert!(chains.iter().all(|c| !c.members.contains(&sid(victim))));
                }
                Err(PlanError::NowhereToGo { .. }) => prop_assert!(r as u64 == n),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    fn sq_dev(chains: &[ChainLoad], w: &BTreeMap<ServerId, u64>) -> f64 {
        let g = Grid::new(chains, w).unwrap();
        (0..g.ids.len())
            .map(|i| (g.load[i] - g.target[i]).powi(2))
            .sum()
    }
}
