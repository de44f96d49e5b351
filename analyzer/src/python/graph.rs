//! Graph algorithms on the walked heap: shortest labelled paths from the module roots (for naming)
//! and the dominator tree (Lengauer–Tarjan, iterative, path compression) for retained sizes.

use super::walk::Walk;

pub const NONE: u32 = u32::MAX;

/// Breadth-first tree from `roots`: `parent[v]` and the label of the edge `parent[v] → v`.
/// Objects no root reaches get no parent; their own roots are added in `extra` order afterwards.
pub struct Bfs {
    pub parent: Vec<u32>,
    pub label: Vec<u32>,
    /// Roots in the order they were used (modules first, then orphans).
    pub roots: Vec<u32>,
}

pub fn bfs(w: &Walk, modules: &[u32]) -> Bfs {
    let n = w.objs.len();
    let mut parent = vec![NONE; n];
    let mut label = vec![0u32; n];
    let mut seen = vec![false; n];
    let mut queue: std::collections::VecDeque<u32> = std::collections::VecDeque::new();
    let mut roots = Vec::new();
    let expand = |queue: &mut std::collections::VecDeque<u32>,
                  seen: &mut Vec<bool>,
                  parent: &mut Vec<u32>,
                  label: &mut Vec<u32>| {
        while let Some(v) = queue.pop_front() {
            let (s, e) = (
                w.starts[v as usize] as usize,
                w.starts[v as usize + 1] as usize,
            );
            for k in s..e {
                let t = w.targets[k];
                if !seen[t as usize] {
                    seen[t as usize] = true;
                    parent[t as usize] = v;
                    label[t as usize] = w.labels[k];
                    queue.push_back(t);
                }
            }
        }
    };
    // All modules are depth 0: seed the queue with all of them before expanding any.
    for &m in modules {
        if (m as usize) < n && !seen[m as usize] {
            seen[m as usize] = true;
            queue.push_back(m);
            roots.push(m);
        }
    }
    expand(&mut queue, &mut seen, &mut parent, &mut label);
    // Orphans: objects nothing we know references (held by C code, frames), then leftover cycles.
    let mut indeg = vec![0u32; n];
    for &t in &w.targets {
        indeg[t as usize] = indeg[t as usize].saturating_add(1);
    }
    for pass in 0..2 {
        for v in 0..n {
            if seen[v] || (pass == 0 && indeg[v] != 0) {
                continue;
            }
            seen[v] = true;
            queue.push_back(v as u32);
            roots.push(v as u32);
            expand(&mut queue, &mut seen, &mut parent, &mut label);
        }
    }
    Bfs {
        parent,
        label,
        roots,
    }
}

/// Retained size of every object: the sum of sizes of the objects it dominates (itself included),
/// with a virtual root whose children are `roots`.
pub fn retained_sizes(w: &Walk, roots: &[u32]) -> Vec<u64> {
    let n = w.objs.len();
    let root = n as u32; // virtual root
    let total = n + 1;
    let nth_succ = |v: u32, k: usize| -> Option<u32> {
        if v == root {
            roots.get(k).copied()
        } else {
            let (s, e) = (
                w.starts[v as usize] as usize,
                w.starts[v as usize + 1] as usize,
            );
            (s + k < e).then(|| w.targets[s + k])
        }
    };
    // Predecessors (CSR).
    let mut pcount = vec![0u32; total + 1];
    for &t in &w.targets {
        pcount[t as usize + 1] += 1;
    }
    for &r in roots {
        pcount[r as usize + 1] += 1;
    }
    for i in 0..total {
        pcount[i + 1] += pcount[i];
    }
    let mut fill = pcount.clone();
    let mut preds = vec![0u32; pcount[total] as usize];
    for v in 0..n {
        let (s, e) = (w.starts[v] as usize, w.starts[v + 1] as usize);
        for &t in &w.targets[s..e] {
            preds[fill[t as usize] as usize] = v as u32;
            fill[t as usize] += 1;
        }
    }
    for &r in roots {
        preds[fill[r as usize] as usize] = root;
        fill[r as usize] += 1;
    }
    drop(fill);

    // Iterative DFS: preorder numbers.
    let mut pre = vec![NONE; total];
    let mut vertex: Vec<u32> = Vec::with_capacity(total);
    let mut dfs_parent: Vec<u32> = Vec::with_capacity(total);
    let mut stack: Vec<(u32, usize)> = Vec::new(); // (vertex, next edge index)
    pre[root as usize] = 0;
    vertex.push(root);
    dfs_parent.push(NONE);
    stack.push((root, 0));
    while let Some(top) = stack.last_mut() {
        let (v, k) = *top;
        match nth_succ(v, k) {
            Some(t) => {
                top.1 += 1;
                if pre[t as usize] == NONE {
                    pre[t as usize] = vertex.len() as u32;
                    vertex.push(t);
                    dfs_parent.push(pre[v as usize]);
                    stack.push((t, 0));
                }
            }
            None => {
                stack.pop();
            }
        }
    }
    let m = vertex.len();
    // Semi-dominators with link/eval (path compression), in DFS-number space.
    let mut semi: Vec<u32> = (0..m as u32).collect();
    let mut label: Vec<u32> = (0..m as u32).collect();
    let mut ancestor = vec![NONE; m];
    let mut path = Vec::new();
    for i in (1..m).rev() {
        let w_v = vertex[i] as usize;
        let (s, e) = (pcount[w_v] as usize, pcount[w_v + 1] as usize);
        for &p in &preds[s..e] {
            let u = pre[p as usize];
            if u == NONE {
                continue;
            }
            let x = eval(u, &mut ancestor, &mut label, &semi, &mut path);
            if semi[x as usize] < semi[i] {
                semi[i] = semi[x as usize];
            }
        }
        ancestor[i] = dfs_parent[i];
    }
    // Immediate dominators (semi-NCA).
    let mut idom = dfs_parent.clone();
    for i in 1..m {
        let mut j = idom[i];
        let mut guard = 0;
        while j != NONE && j > semi[i] && guard < m {
            j = idom[j as usize];
            guard += 1;
        }
        idom[i] = j;
    }
    // Retained: children before parents (higher DFS numbers first).
    let mut ret = vec![0u64; m];
    for i in 1..m {
        ret[i] = w.objs[vertex[i] as usize].size;
    }
    for i in (1..m).rev() {
        let d = idom[i];
        if d != NONE && (d as usize) < m {
            ret[d as usize] = ret[d as usize].saturating_add(ret[i]);
        }
    }
    let mut out = vec![0u64; n];
    for i in 1..m {
        out[vertex[i] as usize] = ret[i];
    }
    out
}

fn eval(v: u32, ancestor: &mut [u32], label: &mut [u32], semi: &[u32], path: &mut Vec<u32>) -> u32 {
    if ancestor[v as usize] == NONE {
        return v;
    }
    // Compress the path from v up to the root of its tree.
    path.clear();
    let mut x = v;
    while ancestor[x as usize] != NONE && ancestor[ancestor[x as usize] as usize] != NONE {
        path.push(x);
        x = ancestor[x as usize];
    }
    while let Some(y) = path.pop() {
        let a = ancestor[y as usize] as usize;
        if semi[label[a] as usize] < semi[label[y as usize] as usize] {
            label[y as usize] = label[a];
        }
        ancestor[y as usize] = ancestor[a];
    }
    label[v as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::walk::{Damage, Obj, Walk};

    /// A graph of objects of size 10 each with the given edges.
    fn walk(n: usize, edges: &[(u32, u32)]) -> Walk {
        let mut starts = Vec::new();
        let mut targets = Vec::new();
        for v in 0..n as u32 {
            starts.push(targets.len() as u32);
            targets.extend(edges.iter().filter(|e| e.0 == v).map(|e| e.1));
        }
        starts.push(targets.len() as u32);
        Walk {
            types: Vec::new(),
            objs: (0..n)
                .map(|i| Obj {
                    addr: 0x1000 + 16 * i as u64,
                    size: 10,
                    ty: 0,
                    items: 0,
                })
                .collect(),
            labels: vec![0; targets.len()],
            starts,
            targets,
            damage: Damage::default(),
        }
    }

    #[test]
    fn retained_sizes_follow_dominators() {
        // 0 → 1 → 2, 0 → 3 → 2: 2 is shared (dominated by 0 only); 1 and 3 keep only themselves.
        // 3 → 4 → 5 → 4 (cycle below 3): 3 retains 4 and 5.
        let w = walk(6, &[(0, 1), (1, 2), (0, 3), (3, 2), (3, 4), (4, 5), (5, 4)]);
        let r = retained_sizes(&w, &[0]);
        assert_eq!(r, vec![60, 10, 10, 30, 20, 10]);
    }

    #[test]
    fn orphans_become_roots_and_modules_come_first() {
        // 0 is the module; 2 → 3 is reachable from nothing we know (held by C code).
        let w = walk(4, &[(0, 1), (2, 3)]);
        let b = bfs(&w, &[0]);
        assert_eq!(b.roots, vec![0, 2]);
        assert_eq!(b.parent[1], 0);
        assert_eq!(b.parent[3], 2);
        let r = retained_sizes(&w, &b.roots);
        assert_eq!(r, vec![20, 10, 20, 10]);
    }

    #[test]
    fn a_pure_cycle_is_still_rooted() {
        let w = walk(3, &[(0, 1), (1, 2), (2, 0)]);
        let b = bfs(&w, &[]);
        assert_eq!(b.roots, vec![0]);
        assert_eq!(retained_sizes(&w, &b.roots), vec![30, 20, 10]);
    }
}
