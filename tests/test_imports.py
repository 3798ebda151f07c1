"""What importing the package costs: a light, lazy root (PEP 562), and a library floor
(``keras_supcon.losses``, ``keras_supcon.models``) that needs Keras only, so that it runs on
the JAX backend in a process where TensorFlow cannot be imported at all."""

import ast
import os
import textwrap
from pathlib import Path

import numpy as np
from checks import python_json
from test_losses import ref_supcon
from tolerances import F32

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_supcon"
FLOOR = ("losses", "models")

# Modules the floor must not import when it is imported: TensorFlow and its companions, the
# plotting / scikit-learn stack, and the package's parts that pull those in.
HEAVY = ("tensorflow", "tf_keras", "tensorflow_datasets", "tensorflow_model_optimization",
         "matplotlib", "sklearn")
UPPER_LAYERS = tuple(f"keras_supcon.{name}" for name in (
    "data", "training", "evaluation", "compression", "runs", "cli",
    "train", "prune", "ablation", "report", "layerwise", "pseudo_label"))
# What the TensorFlow-free process refuses to import.
BLOCKED = ("tensorflow", "tf_keras", "tensorflow_datasets", "tensorflow_model_optimization")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys

    BLOCKED = {BLOCKED!r}
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "imported at startup"

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        # First on sys.meta_path: as if TensorFlow and its companions were not installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, NoTensorFlow())
""")


def _run(script, *, backend):
    return python_json(script, dict(os.environ, KERAS_BACKEND=backend), cwd=ROOT)


def test_losses_and_models_train_on_jax_without_tensorflow(tmp_path):
    """The floor imports, computes SupCon (paper eq. 2, "out") as the plain-loop float64
    reference does, and a contrastive model takes a ``model.fit`` step, on JAX with every
    TensorFlow package unimportable; TensorFlow is not imported at the end."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(12, 2, 8)).astype("float32")  # [B, V, D], unnormalised
    labels = rng.integers(0, 3, size=12)  # repeated labels: several positives per anchor
    temperature = 0.3
    np.savez(tmp_path / "batch.npz", features=features, labels=labels)
    script = BLOCKER + textwrap.dedent(f"""
        import json
        import numpy as np

        from keras_supcon.losses import SupConLoss
        from keras_supcon.models import (build_contrastive_model, build_encoder,
                                         build_projection_head)
        import keras

        batch = np.load({str(tmp_path / "batch.npz")!r})
        loss = float(SupConLoss(temperature={temperature})(batch["labels"], batch["features"]))

        rng = np.random.default_rng(1)
        encoder = build_encoder("small_resnet", image_size=16)
        head = build_projection_head(encoder.output_shape[-1], 32, 16)
        model = build_contrastive_model(encoder, head)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=SupConLoss(temperature=0.5))
        x = rng.uniform(0, 255, (8, 2, 16, 16, 3)).astype("float32")
        y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
        before = [np.array(w) for w in model.trainable_weights]
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        moved = any(not np.array_equal(b, np.array(w))
                    for b, w in zip(before, model.trainable_weights))
        print(json.dumps({{
            "backend": keras.backend.backend(), "loss": loss,
            "fit_loss": history.history["loss"][0], "weights_moved": moved,
            "output_shape": list(model.output_shape),
            "imported": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
        }}))
    """)
    result = _run(script, backend="jax")
    assert result["backend"] == "jax"
    assert result["imported"] == []  # "tensorflow" not in sys.modules, nor its companions
    np.testing.assert_allclose(
        result["loss"], ref_supcon(features.astype(np.float64), labels, temperature, "out"),
        **F32)
    assert np.isfinite(result["fit_loss"]) and result["fit_loss"] > 0
    assert result["weights_moved"]
    assert result["output_shape"] == [None, 2, 16]


def test_importing_the_package_is_light_and_its_names_resolve_lazily():
    """``import keras_supcon`` imports the standard library only; the public names are
    imported when first used, and ``keras_supcon.train`` stays the CLI module."""
    script = textwrap.dedent("""
        import json, sys

        import keras_supcon

        heavy = ("keras", "tensorflow", "jax", "matplotlib", "sklearn", "tensorflow_datasets")
        after_root = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        missing = sorted(set(keras_supcon.__all__) - set(dir(keras_supcon)))
        from keras_supcon.losses import SupConLoss
        from keras_supcon.training import TrainConfig, train
        import keras_supcon.train as cli
        print(json.dumps({
            "after_root": after_root, "missing_from_dir": missing,
            "TrainConfig": keras_supcon.TrainConfig is TrainConfig,
            "run_training": keras_supcon.run_training is train,
            "SupConLoss": keras_supcon.losses.SupConLoss is SupConLoss,
            "cli": keras_supcon.train is cli and callable(cli.main),
            "resolve": [callable(getattr(keras_supcon, name)) for name in
                        ("PruneConfig", "prune_run", "run_ablation", "ConfigError")],
            "modules": [type(getattr(keras_supcon, name)).__name__ for name in
                        ("data", "evaluation", "compression", "models")],
            "unknown": not hasattr(keras_supcon, "no_such_name"),
        }))
    """)
    result = _run(script, backend="tensorflow")
    assert result == {
        "after_root": [], "missing_from_dir": [], "TrainConfig": True, "run_training": True,
        "SupConLoss": True, "cli": True, "resolve": [True] * 4, "modules": ["module"] * 4,
        "unknown": True}, result


def _module_level_imports(body):
    """``(line, module)`` of the imports that run when a module is imported: its top-level
    statements, including those under a top-level ``if`` / ``try`` / ``with`` (not under
    ``if TYPE_CHECKING:``, nor in functions or classes, which run only when called)."""
    for node in body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                yield from _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            yield from _module_level_imports(node.body)


def _absolute(node, module):
    """The modules an ``ImportFrom`` in ``module`` (dotted name) names, relative ones resolved."""
    if node.level:
        # keras_supcon.losses.supcon and keras_supcon.losses.__init__ are both inside
        # keras_supcon.losses: level 1 drops the last part.
        base = module.split(".")[:-node.level]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def test_the_floor_imports_no_tensorflow_at_module_level():
    """No module of ``keras_supcon.losses`` / ``keras_supcon.models`` imports TensorFlow (or
    matplotlib, scikit-learn, or the package's layers that do) when it is imported; a function
    that needs TensorFlow imports it inside, when called. import-linter cannot say this: it
    counts an import inside a function as an import of the module."""
    violations = []
    for part in FLOOR:
        for path in sorted((PACKAGE / part).glob("*.py")):
            # keras_supcon/losses/supcon.py -> keras_supcon.losses.supcon
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, imported in _module_level_imports(tree.body):
                names = [imported] if isinstance(imported, str) else _absolute(imported, module)
                for name in names:
                    if (name.split(".")[0] in HEAVY
                            or any(name == m or name.startswith(m + ".") for m in UPPER_LAYERS)):
                        violations.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
                        break
    assert not violations, "module-level imports in the library floor:\n" + "\n".join(violations)


def test_the_ast_check_sees_imports_under_if_and_try_but_not_in_functions():
    source = textwrap.dedent("""
        import keras
        from keras import ops
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
        try:
            from matplotlib import pyplot
        except ImportError:
            from sklearn import metrics
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import tf_keras
        from .. import data

        def uses_tensorflow():
            import tensorflow_datasets
    """)
    found = []
    for line, imported in _module_level_imports(ast.parse(source).body):
        names = ([imported] if isinstance(imported, str)
                 else _absolute(imported, "keras_supcon.losses.example"))
        found.append((line, names[0] if isinstance(imported, str) else names[-1]))
    assert found == [(2, "keras"), (3, "keras.ops"), (5, "tensorflow"), (7, "matplotlib.pyplot"),
                     (9, "sklearn.metrics"), (10, "typing.TYPE_CHECKING"),
                     (13, "keras_supcon.data")]
