//! The solver with a worker whose results are strings: what runs, what is
//! cached, what is shared between concurrent jobs, what fails and cancels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bk_llb::builder::{self, FileActions, State};
use bk_llb::{Digest, Graph, Vertex};
use bk_proto::pb::op::Op as OpKind;
use bk_solver::{Job, MemoryCache, Op, OpContext, OpError, Progress, SolveError, Solver, Worker};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Counts executions per op name; sources read their "content" from a
/// shared map so tests can change it.
#[derive(Default)]
struct World {
    runs: Mutex<HashMap<String, usize>>,
    content: Mutex<HashMap<String, String>>,
    /// Slow ops running now, and the most ever at once.
    active: std::sync::atomic::AtomicUsize,
    max_active: std::sync::atomic::AtomicUsize,
}

impl World {
    fn runs(&self, name: &str) -> usize {
        self.runs.lock().unwrap().get(name).copied().unwrap_or(0)
    }
    fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }
    fn set(&self, source: &str, content: &str) {
        self.content
            .lock()
            .unwrap()
            .insert(source.into(), content.into());
    }
}

struct TestOp {
    world: Arc<World>,
    vertex: Vertex,
}

fn label(v: &Vertex) -> String {
    match &v.op.op {
        Some(OpKind::Source(s)) => s.identifier.clone(),
        Some(OpKind::File(f)) => format!("file{}", f.actions.len()),
        Some(OpKind::Merge(_)) => "merge".into(),
        _ => "other".into(),
    }
}

#[async_trait]
impl Op<String> for TestOp {
    async fn cache_key(&self, _ctx: &OpContext, _inputs: &[Digest]) -> Result<Digest, OpError> {
        let mut material = self.vertex.digest.to_string();
        if let Some(OpKind::Source(s)) = &self.vertex.op.op {
            // Content-addressed, like a local source.
            material.push_str(
                self.world
                    .content
                    .lock()
                    .unwrap()
                    .get(&s.identifier)
                    .map(String::as_str)
                    .unwrap_or(""),
            );
        }
        Ok(Digest::of(material.as_bytes()))
    }

    async fn exec(&self, ctx: &OpContext, inputs: Vec<String>) -> Result<Vec<String>, OpError> {
        let name = label(&self.vertex);
        *self
            .world
            .runs
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default() += 1;
        if name.starts_with("slow://") {
            use std::sync::atomic::Ordering;
            let now = self.world.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.world.max_active.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.world.active.fetch_sub(1, Ordering::SeqCst);
        }
        if name.starts_with("fail://") {
            return Err(OpError::new(format!("{name} failed on purpose")));
        }
        if name.starts_with("hang://") {
            ctx.cancel.cancelled().await;
            return Err(OpError::new("canceled"));
        }
        let content = self
            .world
            .content
            .lock()
            .unwrap()
            .get(&name)
            .cloned()
            .unwrap_or_default();
        Ok(vec![format!("{name}[{}]{content}", inputs.join(","))])
    }
}

struct TestWorker(Arc<World>);

impl Worker<String> for TestWorker {
    fn op(&self, vertex: &Vertex) -> Result<Arc<dyn Op<String>>, OpError> {
        Ok(Arc::new(TestOp {
            world: self.0.clone(),
            vertex: vertex.clone(),
        }))
    }
}

fn solver(world: &Arc<World>) -> Arc<Solver<String>> {
    Solver::new(
        Arc::new(TestWorker(world.clone())),
        Arc::new(MemoryCache::default()),
        None,
    )
}

fn job(state: &State) -> (Job, Progress) {
    let progress = Progress::new();
    let job = Job {
        graph: Graph::decode(&state.marshal()).unwrap(),
        session_group: vec![],
        progress: progress.clone(),
        cancel: CancellationToken::new(),
    };
    (job, progress)
}

fn src(id: &str) -> State {
    builder::source(id, BTreeMap::new())
}

fn step(base: &State, n: usize) -> State {
    let mut actions = FileActions::new();
    for i in 0..n {
        actions = actions.mkfile(&format!("/f{i}"), 0o644, b"");
    }
    base.file(actions)
}

async fn cached_flags(progress: &Progress) -> HashMap<String, bool> {
    progress.finish();
    let mut out = HashMap::new();
    let mut updates = progress.subscribe();
    while let Some(u) = updates.next().await {
        for v in u.vertexes {
            if v.completed.is_some() {
                out.insert(v.name, v.cached);
            }
        }
    }
    out
}

#[tokio::test]
async fn rebuilds_come_from_the_cache() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let graph = builder::merge(&[step(&src("local://a"), 1), step(&src("local://b"), 2)]);

    let (j, _) = job(&graph);
    let first = solver.solve(j).await.unwrap();
    assert_eq!(first, "merge[file1[local://a[]],file2[local://b[]]]");
    assert_eq!(world.total_runs(), 5);

    let (j, progress) = job(&graph);
    assert_eq!(solver.solve(j).await.unwrap(), first);
    assert_eq!(world.total_runs(), 5, "a cached rebuild runs nothing");
    let flags = cached_flags(&progress).await;
    assert_eq!(
        flags.get("merge (mkfile /f0, mkfile /f0, mkfile /f1)"),
        Some(&true)
    );
    assert!(
        flags.values().all(|c| *c),
        "every completed vertex is cached: {flags:?}"
    );
}

#[tokio::test]
async fn a_changed_source_reruns_only_what_depends_on_it() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let graph = builder::merge(&[step(&src("local://a"), 1), step(&src("local://b"), 2)]);
    let (j, _) = job(&graph);
    solver.solve(j).await.unwrap();

    world.set("local://a", "v2");
    let (j, _) = job(&graph);
    let out = solver.solve(j).await.unwrap();
    assert!(out.contains("local://a[]v2"), "{out}");
    assert_eq!(world.runs("local://a"), 2);
    assert_eq!(world.runs("file1"), 2);
    assert_eq!(world.runs("merge"), 2);
    assert_eq!(world.runs("local://b"), 1, "unrelated source stays cached");
    assert_eq!(world.runs("file2"), 1, "unrelated step stays cached");
}

#[tokio::test]
async fn ignore_cache_reruns_the_vertex() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let (j, _) = job(&src("local://a"));
    solver.solve(j).await.unwrap();
    let (j, _) = job(&src("local://a").ignore_cache());
    solver.solve(j).await.unwrap();
    assert_eq!(world.runs("local://a"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_overlapping_jobs_share_work() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let shared = step(&src("slow://shared"), 1);
    let jobs = (0..50).map(|i| {
        let graph = builder::merge(&[shared.clone(), step(&src(&format!("local://own{i}")), 1)]);
        let solver = solver.clone();
        tokio::spawn(async move {
            let (j, _) = job(&graph);
            solver.solve(j).await
        })
    });
    let results = futures::future::join_all(jobs).await;
    for r in results {
        assert!(r.unwrap().unwrap().contains("slow://shared"));
    }
    assert_eq!(world.runs("slow://shared"), 1, "the shared source ran once");
    assert_eq!(
        world.runs("file1"),
        51,
        "the shared step once, plus one per job"
    );
    assert_eq!(world.runs("merge"), 50);
}

#[tokio::test]
async fn failures_name_the_vertex_and_reach_progress() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let graph = step(&src("fail://x"), 1).with_name("[2/2] RUN false");
    let (j, progress) = job(&graph);
    let err = solver.solve(j).await.unwrap_err();
    match &err {
        SolveError::Op { name, message, .. } => {
            assert_eq!(name, "fail://x");
            assert_eq!(message, "fail://x failed on purpose");
        }
        other => panic!("unexpected {other:?}"),
    }
    progress.finish();
    let errors: Vec<String> = progress
        .subscribe()
        .flat_map(|u| futures::stream::iter(u.vertexes))
        .filter(|v| futures::future::ready(!v.error.is_empty()))
        .map(|v| v.error)
        .collect()
        .await;
    assert_eq!(errors, vec!["fail://x failed on purpose".to_string()]);
    assert_eq!(world.runs("file1"), 0, "nothing after a failure runs");
}

#[tokio::test]
async fn canceling_a_job_stops_it() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let (j, progress) = job(&step(&src("hang://forever"), 1));
    let cancel = j.cancel.clone();
    let solving = tokio::spawn({
        let solver = solver.clone();
        async move { solver.solve(j).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), solving)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(SolveError::Canceled)), "{result:?}");
    progress.finish();
    let canceled = progress
        .subscribe()
        .flat_map(|u| futures::stream::iter(u.vertexes))
        .any(|v| futures::future::ready(v.error == bk_solver::progress::CANCELED))
        .await;
    assert!(canceled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_leaving_does_not_fail_another_sharing_its_work() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let graph = step(&src("slow://shared"), 1);
    let (first, _) = job(&graph);
    let first_cancel = first.cancel.clone();
    let first_run = tokio::spawn({
        let solver = solver.clone();
        async move { solver.solve(first).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (second, _) = job(&graph);
    let second_run = tokio::spawn({
        let solver = solver.clone();
        async move { solver.solve(second).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    first_cancel.cancel();
    assert!(matches!(
        first_run.await.unwrap(),
        Err(SolveError::Canceled)
    ));
    let out = second_run.await.unwrap().unwrap();
    assert!(out.contains("slow://shared"));
    assert_eq!(
        world.runs("slow://shared"),
        1,
        "the shared run went on for the job still waiting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_inputs_run_concurrently() {
    let world = Arc::new(World::default());
    let solver = solver(&world);
    let graph = builder::merge(
        &(0..4)
            .map(|i| src(&format!("slow://{i}")))
            .collect::<Vec<_>>(),
    );
    let (j, _) = job(&graph);
    solver.solve(j).await.unwrap();
    let most = world.max_active.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most >= 2, "inputs ran one at a time");
}
