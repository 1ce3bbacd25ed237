"""fxnas.simplify as a drop-in replacement: shared state, copies, saving, devices, modes."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import fxnas
from fxnas.spaces import NB201Supernet
from fxnas.testing import assert_equivalent


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    model = NB201Supernet(C=4, N=1).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    return model, x, fxnas.simplify(model, x)


def test_shares_parameters_and_buffers_with_the_original(supernet):
    model, _, sgm = supernet
    assert list(sgm.state_dict()) == list(model.state_dict())
    for (name, p), (sname, sp) in zip(model.named_parameters(), sgm.named_parameters()):
        assert name == sname and p is sp
    for (name, b), (sname, sb) in zip(model.named_buffers(), sgm.named_buffers()):
        assert name == sname and b is sb


def test_an_optimizer_on_the_original_parameters_drives_the_simplified_module(supernet):
    model, x, sgm = supernet
    model = copy.deepcopy(model)
    sgm = fxnas.simplify(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = sgm(x).detach().clone()
    sgm(x).pow(2).mean().backward()
    optimizer.step()
    after = sgm(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, model(x))


def test_equivalent_in_train_and_eval(supernet):
    model, x, sgm = supernet
    assert_equivalent(model, sgm, (x,), arch_tensors=())


def test_simplifying_twice_changes_nothing(supernet):
    _, _, sgm = supernet
    again = fxnas.simplify(sgm)
    assert again.code == sgm.code
    assert not any(record.modified for record in fxnas.explain(again).passes)


def test_deepcopy_gives_an_independent_equivalent_module(supernet):
    model, x, sgm = supernet
    clone = copy.deepcopy(sgm)
    assert clone.alphas is not sgm.alphas
    torch.testing.assert_close(clone(x), sgm(x))
    assert fxnas.explain(clone).mixed_edges == fxnas.explain(sgm).mixed_edges


def test_torch_save_and_load_roundtrip(supernet):
    model, x, sgm = supernet
    buffer = io.BytesIO()
    torch.save(sgm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    sgm.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), sgm(x))
    assert len(fxnas.explain(loaded).mixed_edges) == 18
    # a loaded module can be simplified again (values are recomputed from the recorded input shapes)
    torch.testing.assert_close(fxnas.simplify(loaded)(x), sgm(x))
    sgm.train()


def test_state_dict_of_the_original_loads_into_the_simplified_module(supernet):
    model, x, _ = supernet
    other = NB201Supernet(C=4, N=1).double()
    sgm = fxnas.simplify(other, x)
    sgm.load_state_dict(model.state_dict())
    model.eval(), sgm.eval()
    torch.testing.assert_close(sgm(x), model(x))
    model.train()


def test_to_dtype_and_mode_switches(supernet):
    model, x, _ = supernet
    model = copy.deepcopy(model)
    sgm = fxnas.simplify(model, x)
    sgm.float()
    assert model.alphas.dtype == torch.float32  # shared Parameter objects follow
    y = sgm(x.float())
    assert y.dtype == torch.float32
    # every module the graph computes with is the user's own object, called directly or
    # referenced by an fxnas runtime module (merged convolutions, folded and weighted norms)
    from fxnas.modules import ModuleReferences

    user = {id(m) for m in model.modules()}
    used = []
    for node in sgm.graph.nodes:
        if node.op != "call_module":
            continue
        module = sgm.get_submodule(node.target)
        if type(module).__module__.startswith("fxnas."):
            refs = [v for v in vars(module).values() if isinstance(v, ModuleReferences)]
            used.extend(m for r in refs for m in r.modules
                        if m is not None and not type(m).__module__.startswith("fxnas."))
        else:
            used.append(module)
    assert used and all(id(m) in user for m in used)
    sgm.eval()
    assert not any(m.training for m in sgm.modules()) and not any(m.training for m in used)
    sgm.train()
    assert all(m.training for m in sgm.modules()) and all(m.training for m in used)


def test_simplify_needs_example_inputs_for_a_plain_module():
    with pytest.raises(fxnas.FxnasError, match="example_inputs"):
        fxnas.simplify(NB201Supernet(C=4, N=1))


def test_unknown_mode_is_a_clear_error(supernet):
    model, x, _ = supernet
    with pytest.raises(ValueError, match="unknown mode"):
        fxnas.simplify(model, x, mode="fast")


def test_explain_report(supernet):
    _, _, sgm = supernet
    report = fxnas.explain(sgm)
    assert len(report["mixed_edges"]) == 6 * 3  # 3 cells of 6 edges
    edge = report.mixed_edges[0]
    assert edge.name == "cells.0.edges.1<-0"
    assert [c.name for c in edge.candidates] == [f"cells.0.edges.1<-0.{i}" for i in range(5)]
    assert edge.candidates[0].zero and edge.candidates[3].operations == ["ReLU", "Conv2d(3x3)", "BatchNorm2d"]
    assert [p.name for p in report.passes] == [p.name for p in fxnas.pipeline("exact")]
    assert report.pass_record("prune_zero").stats["pruned"] == 18
    assert report.nodes_after < report.nodes_before
    text = str(report)
    assert "prune_zero" in text and "cells.0.edges.1<-0" in text
    assert report.to_json()  # plain values only
