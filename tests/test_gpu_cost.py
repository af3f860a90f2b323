"""benchmarks/gpu_cost.py: its random MPNet is a valid model.name of MPNet's structure, and each
grid-mpnet folder's stages run in an order where every stage's inputs already exist."""
import yaml

from conftest import ROOT, load_bench

bench = load_bench("gpu_cost")


def test_random_mpnet_loads_as_a_classifier_with_the_tokenizers_pad_id(tmp_path, minilm_tokenizer):
    from fisvd.models import compressible_linears, load_classifier, resolve_model
    small = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=48)
    d = bench.random_mpnet(tmp_path / "m", resolve_model("minilm-l6"), **small)
    model = load_classifier(str(d), 2)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert model.config.pad_token_id == minilm_tokenizer.pad_token_id == 0
    mats = compressible_linears(model)
    assert len(mats) == 2 * 6 and {m.shape for m in mats} == {(32, 32), (48, 32), (32, 48)}
    assert {m.type for m in mats} == {"q", "k", "v", "attn_out", "ffn_in", "ffn_out"}
    again = bench.random_mpnet(tmp_path / "m2", resolve_model("minilm-l6"), **small)
    assert (d / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()   # seeded


def test_folder_stages_put_every_producer_before_its_consumers():
    folders = sorted(p.parent for p in (ROOT / "grid-mpnet").glob("*/s*/dvc.yaml"))
    assert folders
    for folder in folders:
        order = bench.folder_stages(folder)
        stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
        outs = {next(iter(o)) if isinstance(o, dict) else o: name
                for name, s in stages.items() for o in s.get("outs", [])}
        assert order[0] == "prepare" and set(order) == set(stages)
        for name, s in stages.items():
            for dep in s.get("deps", []):
                if dep in outs:
                    assert order.index(outs[dep]) < order.index(name), (folder, dep, name)
