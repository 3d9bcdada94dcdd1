"""`sknet preflight`: the check of a new host before its first night.

Versions (Python, MindSpore, numpy, NPU driver, CANN against MindSpore's list), `npu-smi info` (chips
healthy and idle), each planned device's link, network health and IP (`hccn_tool` against hccn.conf and the
rank table), the launch plan, and a collective smoke over all ranks. Each check runs on its own; one that
cannot run here is skipped with the reason.

`registry` lists the checks and runs them (`run_preflight`); `runner` is the machinery (kept free of
heavy imports: the CLI imports it for every command).
"""
