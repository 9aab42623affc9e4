"""Fallback targets and the policy that walks them when the cluster cannot answer.

`policy.py` holds the chain; `targets.py` the interface a target implements;
`local_model.py`, `kserve.py`, `remote_agent.py` answer pipeline requests and
`local_llm.py`, `openai_http.py` continue generations. Import targets from their
modules (or from `edge_runtime`): this package module stays empty of imports so
`remote_agent.py`, which builds a `Cluster`, is not pulled in by the cluster itself.
"""
