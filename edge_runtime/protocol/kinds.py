"""Frame kinds of the agent protocol (docs/PROTOCOL.md): each spelled once, here.

One ROUTER control socket per agent carries every kind. A request is answered by
REPLY or ERROR with the same request id; RUN, ACTIVATION and RESULT form the
pipeline data path and are not answered.
"""

from __future__ import annotations

from transports.wire import ERROR_KIND

PROTOCOL_VERSION = 5
"""The vocabulary's version, reported in hello. 2: every meta is one typed record (the
timings of a result are maps, the stage signature holds TensorSpec maps, ShardSpec's
plan is `plan_json`, hello/join/deploy carry the coordinator's session, `renew` added,
the `load` and `heartbeat` aliases removed). 4: tracing (`trace_id` on run, activation and
llm_step; the `trace` request; `clock` in the hello reply), hub sampling (`sampling` on
llm_step, tokens in its reply), sealed LLM groups, the `llm-stage` deploy type and the
`llm_hidden` hop. 5: agent-side decode runs (`decode_tokens` and `stop_ids` on llm_step,
`final` on its reply, `llm_cancel`) (docs/PROTOCOL.md)."""

# coordinator -> agent requests
HELLO = "hello"
PING = "ping"  # echoes tensors (link probes, heartbeats)
PROFILE = "profile"
JOIN = "join"
PROBE_LINK = "probe_link"
HAS_SHARDS = "has_shards"
PUT_CHUNK = "put_chunk"
DEPLOY = "deploy"
UNLOAD = "unload"
STATUS = "status"
SHUTDOWN = "shutdown"
RENEW = "renew"
TRACE = "trace"  # the spans an agent recorded for traced requests
SET_EXIT = "set_exit"  # to the stage holding an exit: replace its rule in place
# pipeline data path (no reply)
RUN = "run"  # coordinator -> first stage
ACTIVATION = "activation"  # agent -> next stage's agent
RESULT = "result"  # answering stage -> coordinator
# llm-shard deployments (coordinator -> agent, answered by REPLY)
LLM_READY = "llm_ready"
LLM_CONNECT = "llm_connect"
LLM_STEP = "llm_step"
LLM_PUT = "llm_put"
LLM_CANCEL = "llm_cancel"  # end an agent-side decode run (not answered)
# llm-stage deployments (pipeline): a stage's hidden states to the next stage's agents
LLM_HIDDEN = "llm_hidden"
# answers
REPLY = "reply"
ERROR = ERROR_KIND

# Tensors carried along a pipeline are named with these prefixes so the model's
# own tensor names can never collide with the runtime's bookkeeping.
ACT_PREFIX = "a/"  # activations the next stage consumes
OUT_PREFIX = "o/"  # model outputs collected so far
VOTE_PREFIX = "v/"  # an exit output's predicted class per row (int64), for patience exits

# Deployment types an agent serves out of the box.
ONNX_STAGE = "onnx-stage"
LLM_SHARD = "llm-shard"
LLM_STAGE = "llm-stage"
