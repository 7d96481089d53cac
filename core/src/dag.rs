//! Job dependencies: checking that "runs after the success of" edges form a DAG.
//!
//! [`validate`] is what the submit path calls: it refuses an unknown dependency, a job that
//! depends on itself, and a cycle, naming the cycle in order; otherwise it returns an order in
//! which every job comes after all of its dependencies. The answer depends only on the input
//! (nodes and dependencies are visited in the order given), so the same submission always gets
//! the same message.

use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("job {node:?} depends on {dependency:?}, which is not defined")]
    UnknownDependency { node: String, dependency: String },
    #[error("job {node:?} depends on itself")]
    SelfDependency { node: String },
    #[error("job {node:?} is defined more than once")]
    DuplicateNode { node: String },
    /// `path` starts and ends with the same job; each job depends on the next.
    #[error("{}", Cycle(path))]
    Cycle { path: Vec<String> },
}

struct Cycle<'a>(&'a [String]);

impl fmt::Display for Cycle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cycle: {}", self.0.join(" -> "))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Unvisited,
    OnPath,
    Done,
}

/// Checks `nodes` (each a job and the jobs it depends on) and returns them in an order where
/// every job comes after its dependencies. `a -> b` in a cycle message means `a` depends on `b`.
pub fn validate<N: AsRef<str>>(nodes: &[(N, Vec<N>)]) -> Result<Vec<String>, DagError> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, (name, _)) in nodes.iter().enumerate() {
        if index.insert(name.as_ref(), i).is_some() {
            return Err(DagError::DuplicateNode { node: name.as_ref().to_string() });
        }
    }
    let mut edges: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for (name, deps) in nodes {
        let name = name.as_ref();
        let mut out = Vec::with_capacity(deps.len());
        for dep in deps {
            let dep = dep.as_ref();
            if dep == name {
                return Err(DagError::SelfDependency { node: name.to_string() });
            }
            match index.get(dep) {
                Some(&j) => out.push(j),
                None => {
                    return Err(DagError::UnknownDependency { node: name.to_string(), dependency: dep.to_string() });
                }
            }
        }
        edges.push(out);
    }

    // Iterative depth-first search, so a long chain of jobs cannot overflow the stack. The
    // post-order is a topological order (dependencies first); a dependency found on the
    // current path closes a cycle, which is the path from that dependency onwards.
    let name = |i: usize| nodes[i].0.as_ref().to_string();
    let mut mark = vec![Mark::Unvisited; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    let mut path: Vec<(usize, usize)> = Vec::new();
    for root in 0..nodes.len() {
        if mark[root] != Mark::Unvisited {
            continue;
        }
        mark[root] = Mark::OnPath;
        path.push((root, 0));
        while let Some(&mut (node, ref mut next_edge)) = path.last_mut() {
            if let Some(&dep) = edges[node].get(*next_edge) {
                *next_edge += 1;
                match mark[dep] {
                    Mark::Done => {}
                    Mark::Unvisited => {
                        mark[dep] = Mark::OnPath;
                        path.push((dep, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = path[start..].iter().map(|&(n, _)| name(n)).collect();
                        cycle.push(name(dep));
                        return Err(DagError::Cycle { path: cycle });
                    }
                }
            } else {
                mark[node] = Mark::Done;
                order.push(name(node));
                path.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter().map(|(n, deps)| (n.to_string(), deps.iter().map(|d| d.to_string()).collect())).collect()
    }

    #[test]
    fn dag_orders_dependencies_first() {
        let nodes = graph(&[("deploy", &["test", "build"]), ("test", &["build"]), ("build", &[]), ("lint", &[])]);
        let order = validate(&nodes).unwrap();
        assert_eq!(order, vec!["build", "test", "deploy", "lint"]);
    }

    #[test]
    fn dag_empty_and_isolated_nodes_validate() {
        assert_eq!(validate::<&str>(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(validate(&graph(&[("a", &[]), ("b", &[])])).unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn dag_unknown_dependency_names_both() {
        let err = validate(&graph(&[("a", &["b"]), ("b", &["ghost"])])).unwrap_err();
        assert_eq!(err, DagError::UnknownDependency { node: "b".into(), dependency: "ghost".into() });
        assert_eq!(err.to_string(), r#"job "b" depends on "ghost", which is not defined"#);
    }

    #[test]
    fn dag_self_dependency_is_refused() {
        let err = validate(&graph(&[("a", &[]), ("b", &["a", "b"])])).unwrap_err();
        assert_eq!(err.to_string(), r#"job "b" depends on itself"#);
    }

    #[test]
    fn dag_duplicate_node_is_refused() {
        let err = validate(&graph(&[("a", &[]), ("a", &[])])).unwrap_err();
        assert_eq!(err.to_string(), r#"job "a" is defined more than once"#);
    }

    #[test]
    fn dag_cycle_is_named_in_order_and_deterministically() {
        let nodes = graph(&[("start", &["a"]), ("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let first = validate(&nodes).unwrap_err();
        assert_eq!(first.to_string(), "cycle: a -> b -> c -> a");
        for _ in 0..10 {
            assert_eq!(validate(&nodes).unwrap_err(), first);
        }
    }

    #[test]
    fn dag_two_node_cycle() {
        let err = validate(&graph(&[("x", &["y"]), ("y", &["x"])])).unwrap_err();
        assert_eq!(err.to_string(), "cycle: x -> y -> x");
    }

    #[test]
    fn dag_long_chain_does_not_overflow() {
        let nodes: Vec<(String, Vec<String>)> = (0..100_000)
            .map(|i| {
                let deps = if i == 0 { vec![] } else { vec![format!("j{}", i - 1)] };
                (format!("j{i}"), deps)
            })
            .rev()
            .collect();
        let order = validate(&nodes).unwrap();
        assert_eq!(order.first().map(String::as_str), Some("j0"));
        assert_eq!(order.len(), 100_000);
    }

    /// Random DAGs: node i may depend only on nodes before it.
    fn random_dag() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        (1usize..30).prop_flat_map(|n| {
            proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..4), n).prop_map(
                move |picks| {
                    picks
                        .into_iter()
                        .enumerate()
                        .map(|(i, deps)| {
                            let mut deps: Vec<String> =
                                if i == 0 { vec![] } else { deps.iter().map(|d| format!("n{}", d.index(i))).collect() };
                            deps.dedup();
                            (format!("n{i}"), deps)
                        })
                        .collect()
                },
            )
        })
    }

    proptest! {
        #[test]
        fn dag_random_dags_validate_and_order_respects_edges(nodes in random_dag(), shuffle in any::<u64>()) {
            // Present the nodes in a scrambled order: validation must not rely on it.
            let mut nodes = nodes;
            let len = nodes.len();
            nodes.rotate_left((shuffle as usize) % len);
            let order = validate(&nodes).unwrap();
            prop_assert_eq!(order.len(), nodes.len());
            let position: HashMap<&str, usize> =
                order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
            for (node, deps) in &nodes {
                for dep in deps {
                    prop_assert!(position[dep.as_str()] < position[node.as_str()], "{dep} must come before {node}");
                }
            }
        }

        #[test]
        fn dag_a_back_edge_is_a_cycle_naming_both_ends(
            nodes in random_dag().prop_filter("needs an edge", |n| n.iter().any(|(_, d)| !d.is_empty())),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut nodes = nodes;
            let with_deps: Vec<usize> =
                (0..nodes.len()).filter(|&i| !nodes[i].1.is_empty()).collect();
            let later = with_deps[pick.index(with_deps.len())];
            let earlier = nodes[later].1[0].clone();
            let later_name = nodes[later].0.clone();
            let earlier_index = nodes.iter().position(|(n, _)| *n == earlier).unwrap();
            nodes[earlier_index].1.push(later_name.clone());
            let err = validate(&nodes).unwrap_err();
            let DagError::Cycle { path } = &err else {
                return Err(TestCaseError::fail(format!("expected a cycle, got {err}")));
            };
            prop_assert_eq!(path.first(), path.last());
            prop_assert!(path.contains(&earlier) && path.contains(&later_name), "{err}");
            // Every step of the named cycle is a real dependency edge.
            for pair in path.windows(2) {
                let deps = &nodes.iter().find(|(n, _)| *n == pair[0]).unwrap().1;
                prop_assert!(deps.contains(&pair[1]), "{} does not depend on {}", pair[0], pair[1]);
            }
            prop_assert_eq!(validate(&nodes).unwrap_err(), err.clone());
        }
    }
}
