"""collect: the SFT policy samples K responses per annotation prompt; they are written as Label Studio import
tasks (a ``Text`` prompt and a ``List`` of candidates to rank, STACK-NOTES' ranking config)."""
from __future__ import annotations

from pathlib import Path

from rlhf import accel
from rlhf.chat import check_prompts, prompt_text
from rlhf.config import CollectConfig
from rlhf.data import load_jsonl, write_json
from rlhf.generation import sample_responses
from rlhf.limits import check_sampling
from rlhf.modeling import load_causal_lm, load_tokenizer
from rlhf.stages.common import StageResult, seed_everything

LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <List name="candidates" value="$candidates" title="Responses"/>
  <Ranker name="rank" toName="candidates"/>
</View>"""


def make_task(prompt, responses: list[str], ended: list[bool]) -> dict:
    """One Label Studio import task: candidates r0..rK-1 (``ended``: the response ended with its end id). A chat
    prompt (messages) is shown to annotators as its last user turn and kept whole under ``messages``."""
    data = {"prompt": prompt_text(prompt), "candidates": [
        {"id": f"r{i}", "title": f"Response {i + 1}", "body": body, "ended": bool(e)}
        for i, (body, e) in enumerate(zip(responses, ended))]}
    if not isinstance(prompt, str):
        data["messages"] = list(prompt)
    return {"data": data}


def run(cfg: CollectConfig, on_log=None) -> StageResult:
    seed_everything(cfg.seed)
    check_sampling(cfg.model_path, cfg.sampling, "collect")                          # before any work
    prompts = [r["prompt"] for r in load_jsonl(cfg.prompts)]
    if cfg.max_prompts:
        prompts = prompts[:cfg.max_prompts]
    tok = load_tokenizer(cfg.model_path)
    check_prompts(tok, prompts, cfg.prompts)
    device = accel.resolve_device(cfg.compute.device, key="collect.compute.device")
    model = accel.prepare(load_causal_lm(cfg.model_path, tok, dtype=cfg.compute.dtype), device, cfg.compute, trainable=False)
    repeated = [p for p in prompts for _ in range(cfg.k)]                       # K consecutive copies per prompt
    s = cfg.sampling
    texts, ended = sample_responses(model, tok, repeated, s.max_new_tokens, s.temperature, s.batch_size, cfg.seed,
                                    s.max_prompt_tokens,
                                    on_progress=(lambda n, t: on_log(n, {"progress/responses": n})) if on_log else None)
    tasks = [make_task(p, texts[i * cfg.k:(i + 1) * cfg.k], ended[i * cfg.k:(i + 1) * cfg.k])
             for i, p in enumerate(prompts)]
    out = Path(cfg.out_dir)
    write_json(out / "tasks.json", tasks)
    (out / "label_config.xml").write_text(LABEL_CONFIG + "\n", encoding="utf-8")
    metrics = {"n_prompts": len(prompts), "n_responses": len(texts), "eos_rate": sum(ended) / max(len(ended), 1),
               "distinct_responses": len(set(texts)) / max(len(texts), 1)}
    return StageResult(metrics, outputs={"tasks": str(out / "tasks.json")})
