"""`deepspeed launch/train.py` end to end: real launcher, 2 CPU ranks (gloo), the tiny preset, the
chapter's data. Each run takes tens of seconds, so runs are shared between tests (module fixtures).
"""

from __future__ import annotations

import math
import subprocess
import sys

import orjson
import pytest
import torch

from tests.trainer.launcher import DATA, REPO, TINY, events, free_port, of_type, start, train, wait

pytestmark = pytest.mark.slow

SHORT = ["--max-steps", "6", "--eval-every", "3", "--max-new-tokens", "8"]

# Per-step training losses of the tiny preset (seed 123, random init, fp32, global batch 8) on the
# chapter's data. Any change that keeps the math reproduces them; one that changes them must
# say why in its commit.
GOLDEN_LOSSES = [
    10.800656876474056, 10.780119154188368, 10.76275003367457,
    10.757188646303613, 10.73529948663274, 10.714940688189339,
]


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def finished_run(request, tmp_path_factory):
    """A user's ds_config that also sets what the flags own (batch size, optimizer): flags win."""
    base = tmp_path_factory.mktemp(f"zero{request.param}")
    ds_config = orjson.loads((REPO / "ds_config.json").read_bytes())
    ds_config["zero_optimization"]["stage"] = request.param
    ds_config["train_batch_size"] = 99
    ds_config["optimizer"] = {"type": "SGD", "params": {"lr": 1.0}}
    (base / "ds.json").write_bytes(orjson.dumps(ds_config))
    out = base / "run"
    code, log = train([*TINY, *SHORT, "--ds-config", str(base / "ds.json"), "--out", str(out)])
    assert code == 0, log[-4000:]
    return request.param, out, log


def test_flags_win_over_a_ds_config_with_one_warning_each(finished_run):
    _, out, log = finished_run
    for key in ("train_batch_size", "optimizer"):
        assert log.count(f"sets '{key}': the run's flags win") == 1, log[-3000:]
    warnings = [e for e in of_type(events(out), "alert") if e["kind"] == "warning"]
    assert sorted(e["message"].split("'")[1] for e in warnings) == ["optimizer", "train_batch_size"]
    assert all(e["step"] == 0 and e["rank"] is None for e in warnings)
    resolved = orjson.loads((out / "ds_config.json").read_bytes())
    assert resolved["train_batch_size"] == 8 and "optimizer" not in resolved


def test_run_writes_every_output(finished_run):
    stage, out, _ = finished_run
    for name in ["config.json", "ds_config.json", "metrics.jsonl", "instruction-data-with-response.json",
                 "tiny-sft.pth", "hf/model.safetensors", "hf/config.json", "loss.png",
                 "ranks/rank-0.jsonl", "ranks/rank-1.jsonl"]:
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"

    config = orjson.loads((out / "config.json").read_bytes())
    assert config["config"]["model"] == "tiny" and config["world_size"] == 2
    assert config["ds_config"]["zero_optimization"]["stage"] == stage
    assert config["layout"] == {"global_batch": 8, "micro_batch": 4, "grad_accum": 1, "world_size": 2}
    prov = config["provenance"]
    assert len(prov["data"]["sha256"]) == 64
    assert set(prov["tokenizer"]) == {"encoder.json", "vocab.bpe"}
    assert prov["weights"]["format"] == "random"

    responses = orjson.loads((out / "instruction-data-with-response.json").read_bytes())
    data = orjson.loads(DATA.read_bytes())
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in responses] == data[935:1045]
    assert all(isinstance(r["model_response"], str) for r in responses)


def test_metrics_follow_the_contract(finished_run):
    stage, out, _ = finished_run
    evs = events(out)
    assert all(e["v"] == 1 and isinstance(e["time"], float) for e in evs)
    start_ev = evs[0]
    assert start_ev["type"] == "run_start"
    assert start_ev["zero_stage"] == stage and start_ev["world_size"] == 2 and start_ev["total_steps"] == 6
    assert start_ev["attempt"] == 1 and start_ev["resumed_from_step"] == 0
    assert start_ev["params"] == 3_382_080  # the model's size, also under ZeRO-3 (partitioned by then)
    trains = of_type(evs, "train")
    assert [e["step"] for e in trains] == [1, 2, 3, 4, 5, 6]
    assert all(e["grad_norm"] > 0 and e["tokens"] > 0 and e["mfu"] is None for e in trains)
    assert trains[-1]["tokens_total"] == sum(e["tokens"] for e in trains)
    # As the chapter: evaluations after the first step, then every --eval-every steps.
    assert [e["step"] for e in of_type(evs, "eval") if not e["full"]] == [1, 4]
    assert [e["step"] for e in of_type(evs, "sample")] == [1, 4]
    assert of_type(evs, "generate")[-1] == {**of_type(evs, "generate")[-1], "done": 110, "total": 110}
    end = evs[-1]
    assert end["type"] == "run_end" and end["status"] == "completed" and end["error"] is None
    assert end["step"] == 6 and math.isfinite(end["final_val_loss"])

    for rank in (0, 1):
        beats = events(out, f"ranks/rank-{rank}.jsonl")
        assert beats and all(b["type"] == "system" and b["rank"] == rank for b in beats)
        assert beats[-1]["step"] == 6 and beats[-1]["rss_bytes"] > 0
        assert beats[-1]["gpu_util_percent"] is None


def test_golden_curve(finished_run):
    """ZeRO-2 and ZeRO-3 compute the same steps; both reproduce the pinned curve."""
    _, out, _ = finished_run
    losses = [e["loss"] for e in of_type(events(out), "train")]
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=1e-5)


def test_exports_match_the_trained_model(finished_run, tmp_path):
    """The exported .pth (chapter keys) gives the engine's final validation loss; the HF export
    loads into transformers with the same logits."""
    from transformers import GPT2LMHeadModel

    from trainer.training.data import InstructionDataset, collate, split_entries, tokenize
    from trainer.training.loss import target_count, token_loss_sum
    from trainer.gpt2.tokenizer import get_tokenizer
    from trainer.gpt2.weights import load_model
    from tests.trainer.launcher import DATA, TOKENIZER
    from instruct import read_entries

    _, out, _ = finished_run
    model, info = load_model("tiny", str(out / "tiny-sft.pth"))
    assert info.format == "chapter"
    model.eval()
    _, _, val = split_entries(read_entries(DATA))
    dataset = InstructionDataset(tokenize(val, get_tokenizer(TOKENIZER)))
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), 8):
            inputs, targets = collate([dataset[i].token_ids for i in range(start, min(start + 8, len(dataset)))])
            total += float(token_loss_sum(model(inputs), targets))
            tokens += target_count(targets)
    assert total / tokens == pytest.approx(events(out)[-1]["final_val_loss"], abs=1e-5)

    hf, info = GPT2LMHeadModel.from_pretrained(out / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = collate([dataset[i].token_ids for i in range(4)])[0]
    with torch.no_grad():
        assert torch.allclose(hf.eval()(batch).logits, model(batch), atol=1e-5)


def test_token_mean_loss_is_independent_of_the_batch_layout(tmp_path):
    """1 rank x micro 8, 1 rank x 2 accumulation x 4 and 2 ranks x 4 give the same weights after a
    step on examples of unequal lengths: the loss is a mean over the global batch's tokens."""
    weights = {}
    layouts = {"1x8": (1, ["--micro-batch", "8"]), "1x2x4": (1, ["--micro-batch", "4"]), "2x4": (2, [])}
    for name, (ranks, extra) in layouts.items():
        out = tmp_path / name
        code, log = train([*TINY, "--max-steps", "1", "--max-new-tokens", "1", "--eval-every", "0",
                           "--epochs", "1", "--out", str(out), *extra], ranks=ranks)
        assert code == 0, log[-3000:]
        assert of_type(events(out), "run_start")[0]["grad_accum"] == (2 if name == "1x2x4" else 1)
        weights[name] = torch.load(out / "tiny-sft.pth", weights_only=True)
    for name in ("1x2x4", "2x4"):
        for key, tensor in weights["1x8"].items():
            assert torch.allclose(weights[name][key], tensor, atol=1e-6, rtol=0), (name, key)


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_through_deepspeed_follows_the_fp32_curve_and_exports_fp32(tmp_path, stage):
    """--precision bf16 (DeepSpeed's bf16: bf16 weights and activations, fp32 master weights) on 2
    CPU ranks, with ZeRO (fp32 gradient accumulation) and without (bf16 gradients, which DeepSpeed
    requires there): the per-step losses round differently from the pinned fp32 curve but stay
    within 0.2% of it (measured: 2.5e-4 and 7e-4 at worst), and the exports are fp32 as always."""
    out = tmp_path / "run"
    code, log = train([*TINY, *SHORT, "--max-new-tokens", "1", "--precision", "bf16", "--zero-stage", str(stage),
                       "--out", str(out)])
    assert code == 0, log[-3000:]
    evs = events(out)
    assert of_type(evs, "run_start")[0]["precision"] == "bf16"
    losses = [e["loss"] for e in of_type(evs, "train")]
    assert losses == pytest.approx(GOLDEN_LOSSES, rel=2e-3)
    assert losses != pytest.approx(GOLDEN_LOSSES, abs=1e-5)  # bf16 did round
    assert {t.dtype for t in torch.load(out / "tiny-sft.pth", weights_only=True).values()} == {torch.float32}


def test_compile_keeps_the_curve_and_generates_the_eager_responses(tmp_path):
    """--compile end to end: the compiled model (dynamic shapes) reproduces the pinned fp32 curve,
    and the test responses, generated through the compiled decode step, are the ones the exported
    weights give eagerly."""
    from tests.trainer.launcher import TOKENIZER
    from trainer.gpt2.generation import GenerationSettings, generate_responses
    from trainer.gpt2.tokenizer import get_tokenizer
    from trainer.gpt2.weights import load_model

    out = tmp_path / "run"
    code, log = train([*TINY, *SHORT, "--compile", "--out", str(out)], timeout=600)
    assert code == 0, log[-3000:]
    # DeepSpeed's throughput timer is off: its forward pre-hook, traced with the model, would call
    # torch.cuda.synchronize(None) on a GPU, which dynamo cannot trace.
    assert orjson.loads((out / "ds_config.json").read_bytes())["timers"] == {"throughput": {"enabled": False}}
    losses = [e["loss"] for e in of_type(events(out), "train")]
    assert losses == pytest.approx(GOLDEN_LOSSES, rel=1e-4)
    written = orjson.loads((out / "instruction-data-with-response.json").read_bytes())
    model, _ = load_model("tiny", str(out / "tiny-sft.pth"))
    # Rank 0's shard (the first half), in the same batches of --generate-batch 16 as the run.
    shard = [{k: v for k, v in e.items() if k != "model_response"} for e in written[: len(written) // 2]]
    expected = generate_responses(model, get_tokenizer(TOKENIZER), shard, GenerationSettings(max_new_tokens=8))
    assert [e["model_response"] for e in written[: len(shard)]] == expected


def test_two_nodes_on_loopback_share_one_run_directory_and_one_token_cache(tmp_path, tmp_path_factory, monkeypatch):
    """Both nodes find no token cache in the folder they share: each builds one (or finds the
    other's, if it came first); the first rename wins and one complete cache is left."""
    cache = tmp_path_factory.mktemp("shared-cache")
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(cache))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    out = tmp_path / "run"
    port = str(free_port())
    args = [*TINY, "--max-steps", "2", "--eval-every", "0", "--max-new-tokens", "2", "--out", str(out)]
    nodes = []
    for node_rank in (0, 1):
        launcher = ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
                    "--master_addr", "127.0.0.1", "--master_port", port]
        cmd_proc = start(args, ranks=1, launcher_args=launcher)
        nodes.append(cmd_proc)
    results = [wait(p, timeout=300) for p in nodes]
    for code, log in results:
        assert code == 0, log[-3000:]
    assert sorted(p.name for p in (out / "ranks").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]
    evs = events(out)
    assert evs[0]["world_size"] == 2 and evs[-1]["status"] == "completed"
    assert [p.name for p in tmp_path.iterdir() if p.name != "hostfile"] == ["run"]
    [key] = [p.name for p in (cache / "tokens").iterdir()]
    assert not key.startswith(".") and (cache / "tokens" / key / "manifest.json").is_file()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), *TINY, "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "3,382,080 parameters" in text
    assert "116 per epoch, 232 in total" in text
    assert "0 examples exceed --max-length 1024" in text
    assert "ZeRO-0" in text and "ZeRO-1" in text and "ZeRO-3" in text
    assert [line for line in text.splitlines() if "<- this run" in line][0].startswith("  ZeRO-2")
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--global-batch", "6", "--micro-batch", "4"], "is not a whole number"),
        (["--split", "0.9,0.2"], "--split takes two positive fractions"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--generate-batch", "0"], "--generate-batch must be at least 1"),
        # Offline (here: a closed port): the one line names every flag that takes a local copy.
        (["--data", "http://127.0.0.1:9/instruction-data.json"],
         "give local copies with --tokenizer-dir DIR --data PATH --weights PATH"),
        (["--ds-config", "/nonexistent.json"], "/nonexistent.json: DeepSpeed config not found"),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, extra, message):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), *TINY, "--out", str(out), *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not out.exists()


def test_bad_data_under_the_launcher_stops_both_ranks_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]')
    out = tmp_path / "run"
    args = [a if a != str(TINY[5]) else str(bad) for a in TINY]
    code, log = train([*args, "--out", str(out)])
    assert code != 0
    assert f"error: {bad}: entry 1: missing field 'output'" in log
    assert not out.exists()


def test_logged_rates_and_clipping_are_the_ones_the_updates_used(tmp_path):
    """--warmup-steps 2 --schedule cosine --grad-clip: each `train` event's lr is the closed-form
    rate of its own update, grad_norm is the norm before clipping, and the weights after 4 steps
    are those of a plain-PyTorch run with the same rates and clipping (2 ranks, ZeRO-2)."""
    from tests.trainer.reference import reference_steps
    from trainer.gpt2.weights import load_model

    base, warmup, total, clip = 5e-5, 2, 4, 0.5
    rates = [base * 0.5, base, base, base * 0.5 * (1 + math.cos(math.pi * 1 / (total - warmup)))]
    out = tmp_path / "run"
    code, log = train([*TINY, "--max-steps", str(total), "--warmup-steps", str(warmup), "--schedule", "cosine",
                       "--grad-clip", str(clip), "--eval-every", "0", "--max-new-tokens", "1", "--out", str(out)])
    assert code == 0, log[-3000:]
    trains = of_type(events(out), "train")
    assert [e["lr"] for e in trains] == pytest.approx(rates, rel=1e-12)
    expected, norms = reference_steps(list(range(total)), rates, clip=clip)
    assert [e["grad_norm"] for e in trains] == pytest.approx(norms, rel=1e-5)
    assert min(norms) > clip  # every step was clipped
    trained = load_model("tiny", str(out / "tiny-sft.pth"))[0].state_dict()
    assert max(float((trained[k] - expected[k]).abs().max()) for k in expected) <= 2e-6


def test_a_non_preset_model_trains_and_is_named_by_its_size(tmp_path):
    """A 6-layer GPT-2 (no preset) given by its files alone: the run names it by size as the chapter
    would (run_start.model, the .pth), records its architecture, and every command reads it back
    without --model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=6, n_head=4)).save_pretrained(tmp_path / "six")
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--model", "tiny")]
    args[args.index("--weights") + 1] = str(tmp_path / "six")
    code, log = train([*args, "--max-steps", "2", "--eval-every", "0", "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0, log[-3000:]
    assert events(out)[0]["model"] == "gpt2-4M" and events(out)[-1]["status"] == "completed"
    config = orjson.loads((out / "config.json").read_bytes())
    assert config["model"] == "gpt2-4M" and config["architecture"]["n_layers"] == 6
    assert (out / "gpt2-4M-sft.pth").is_file()
    answer = subprocess.run([sys.executable, "-m", "trainer.generate", "--weights", str(out / "gpt2-4M-sft.pth"),
                             "--tokenizer-dir", str(TINY[7]), "--max-new-tokens", "3", "Say hi."],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert answer.returncode == 0, answer.stderr
