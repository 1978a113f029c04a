//! Recorded training steps. Every training step of a run is the same sequence of launches
//! (its offset and rates are read from the step record on the device, `backend::Step`), so a
//! GPU can record one step as a CUDA graph and replay it: one launch per step instead of one
//! per kernel. [`Replayer`] decides, per kind of step, when to run op by op, when to record and
//! when to replay; [`Record`] is what a backend offers for it.
use crate::error::Result;

/// Recording and replaying a sequence of ops (a CUDA graph on the GPU).
pub trait Record {
    /// A recorded sequence of ops.
    type Graph;
    /// Records the ops `body` issues, without running them, into a graph that
    /// [`Record::replay`] runs as a unit. `Ok(None)`: this backend does not record (the CPU);
    /// the caller runs `body` itself. A graph keeps the addresses of every tensor it touches:
    /// they must stay allocated and be changed only in place (`Backend::write`,
    /// `Backend::write_words`). Every op in `body` should have run once before, unrecorded
    /// (kernels loaded, scratch buffers at their size).
    fn record(&mut self, body: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<Option<Self::Graph>>;
    /// Runs a recorded graph.
    fn replay(&mut self, graph: &Self::Graph) -> Result<()>;
}

/// How one kind of step is executed so far.
enum Stage<G> {
    /// Run once, op by op: its kernels are loaded and its scratch buffers sized.
    RanOnce,
    /// Recorded (`None`: the backend does not record, or recording is off): run this way from now on.
    Recorded(Option<G>),
}

/// Runs the steps of a run. Steps of one kind (`K`, e.g. resolution and whether the whitening
/// bias trains) are the same launches: the first runs op by op, the second is recorded and
/// replayed, every later one is replayed. With `record` false every step runs op by op.
pub struct Replayer<K, G> {
    record: bool,
    stages: Vec<(K, Stage<G>)>,
    /// Why a recording failed, once per kind (the caller prints these).
    pub warnings: Vec<String>,
}

impl<K: PartialEq, G> Replayer<K, G> {
    pub fn new(record: bool) -> Self {
        Replayer { record, stages: Vec::new(), warnings: Vec::new() }
    }

    /// Executes one step of kind `kind`; `step` issues its ops.
    pub fn step<B>(&mut self, b: &mut B, kind: K, step: &mut dyn FnMut(&mut B) -> Result<()>) -> Result<()>
    where
        B: Record<Graph = G>,
    {
        let Some(i) = self.stages.iter().position(|(k, _)| *k == kind) else {
            step(b)?;
            let stage = if self.record { Stage::RanOnce } else { Stage::Recorded(None) };
            self.stages.push((kind, stage));
            return Ok(());
        };
        match &self.stages[i].1 {
            Stage::Recorded(Some(graph)) => b.replay(graph),
            Stage::Recorded(None) => step(b),
            Stage::RanOnce => {
                // A failed recording costs speed, not the run: the step runs op by op from now on
                // (a real error in the ops then surfaces there), and the reason is kept.
                let graph = b.record(step).unwrap_or_else(|e| {
                    self.warnings.push(format!("recording a step failed ({e}); running it op by op"));
                    None
                });
                match &graph {
                    Some(g) => b.replay(g)?,
                    None => step(b)?,
                }
                self.stages[i].1 = Stage::Recorded(graph);
                Ok(())
            }
        }
    }

    /// Kinds seen so far that run as a recorded graph.
    pub fn recorded(&self) -> usize {
        self.stages.iter().filter(|(_, s)| matches!(s, Stage::Recorded(Some(_)))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that counts: `record` returns a graph (when it can) without running the body,
    /// as a CUDA capture does; `replay` counts per graph.
    struct Counter {
        can_record: bool,
        fails: bool,
        ran: usize,
        recorded: usize,
        replays: Vec<usize>,
    }

    impl Record for Counter {
        type Graph = usize;
        fn record(&mut self, _body: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<Option<usize>> {
            if !self.can_record {
                return Ok(None);
            }
            if self.fails {
                return Err(crate::Error::Gpu("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED".into()));
            }
            self.recorded += 1;
            self.replays.push(0);
            Ok(Some(self.replays.len() - 1))
        }
        fn replay(&mut self, g: &usize) -> Result<()> {
            self.replays[*g] += 1;
            Ok(())
        }
    }

    fn steps(can_record: bool, record: bool, kinds: &[char]) -> Counter {
        steps_failing(can_record, false, record, kinds).0
    }

    fn steps_failing(can_record: bool, fails: bool, record: bool, kinds: &[char]) -> (Counter, Vec<String>) {
        let mut c = Counter { can_record, fails, ran: 0, recorded: 0, replays: Vec::new() };
        let mut r = Replayer::new(record);
        for &k in kinds {
            r.step(&mut c, k, &mut |c: &mut Counter| {
                c.ran += 1;
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(r.recorded(), c.recorded);
        (c, r.warnings)
    }

    #[test]
    fn a_failed_recording_falls_back_to_op_by_op_with_a_warning() {
        let (c, warnings) = steps_failing(true, true, true, &['a', 'a', 'a', 'b', 'b']);
        assert_eq!((c.ran, c.recorded, c.replays.len()), (5, 0, 0));
        assert_eq!(warnings.len(), 2, "one warning per kind: {warnings:?}");
        assert!(warnings[0].contains("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"), "{warnings:?}");
    }

    #[test]
    fn each_kind_runs_once_then_is_recorded_and_replayed() {
        // kinds a a a a b b a b: each step executes exactly once, as a body run or a replay
        let kinds = ['a', 'a', 'a', 'a', 'b', 'b', 'a', 'b'];
        let c = steps(true, true, &kinds);
        assert_eq!((c.ran, c.recorded), (2, 2), "one op-by-op run and one recording per kind");
        assert_eq!(c.replays, vec![4, 2], "a: steps 2..=4 and 7; b: steps 6 and 8");
        assert_eq!(c.ran + c.replays.iter().sum::<usize>(), kinds.len());
    }

    #[test]
    fn without_recording_every_step_runs_op_by_op() {
        let kinds = ['a', 'a', 'b', 'a'];
        for (can, want) in [(true, false), (false, true), (false, false)] {
            let c = steps(can, want, &kinds);
            assert_eq!((c.ran, c.recorded, c.replays.len()), (4, 0, 0), "can_record {can}, record {want}");
        }
    }
}
