"""Batched decoding engine: bucketed prefill, an on-device decode loop, tree scoring, kept caches.

How a list of prompts is run (docs/design.md, "KV-cache decoding"):

1. Prompts are sorted by length (longest first, so the largest buffers are made first) and cut
   into runs of at most `batch_size` (`Planner`). Each batch is left-padded to a length bucket (a
   multiple of `bucket_step`) and its rows to `batch_size` or a power-of-two fraction of it, so a
   long run compiles a handful of programs, never one per batch. Where the cuts go is chosen to
   minimise a model of device time: a batch is cut where the length bucket changes when the padding
   saved outweighs one more batch's decode steps (on a CPU, also its programs' set-up).
2. One jitted prefill writes every prompt token except the last into a fresh KV cache (on a CPU,
   a big batch's rows in groups of ~2,000 tokens, where its GEMMs run fastest). The last
   token stays *pending*: the first decode step feeds it. So a batch's state is always the same
   pair (cache, pending token per row), whether it has just been prefilled, has decoded a score
   line, or is continuing with reasons; continuing never runs the prompt again.
3. Decoding is one jitted `lax.while_loop` with the cache donated: per-row `active` flags, a
   fixed [B, max_new] output buffer, per-row stop = a boolean table over the vocabulary (EOS, or
   any token whose text holds a newline in scores-only mode). The loop exits when every row is
   done; there is no host round trip per token. A row's stopping token is not fed (it becomes the
   row's pending token), and finished rows write only masked-out cache slots, so a later call can
   continue any subset of rows exactly where each stopped.
4. Tree scoring runs many candidate continuations of every row (e.g. all score lines "1 1\\n" ..
   "10 10\\n") in one call, each token attending only to its own ancestors (`chunk_mask`), then
   restores the cache so decoding can follow.

Data parallel: the batch is split over the mesh's data (and fsdp) axes, the model replicated; on a
mesh with a tensor axis the weights and the cache are sharded over heads / MLP (sharding.RULES).
Greedy results do not depend on the batch size, a row's batch mates or the device count: every
row's computation is the same up to float reassociation, and sampling keys come from the sample's
own index (sampling.py).
"""
from jlm.infer.engine.engine import Batch, CandidateTree, Engine, Generation, default_mesh, stop_table, token_table
from jlm.infer.engine.planner import CPU_BATCH_FLOPS, CPU_FLOP_PER_BYTE, FLOP_PER_BYTE, Planner
from jlm.infer.engine.programs import DecodeState

__all__ = ["Batch", "CandidateTree", "CPU_BATCH_FLOPS", "CPU_FLOP_PER_BYTE", "DecodeState", "Engine", "FLOP_PER_BYTE",
           "Generation", "Planner", "default_mesh", "stop_table", "token_table"]
