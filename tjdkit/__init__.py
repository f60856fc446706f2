"""tjdkit: tensor methods that make language models faster and better.

What users do from Python, in one place (each name loads its torch-heavy code on first use):

    import tjdkit
    run = tjdkit.load_run("runs/stemp-cp")                   # model, tokenizer and trained joint head
    tokens, stats = tjdkit.generate(run.model, ids, mode="verify", head=run.head)
    head = tjdkit.build_head("cp", hidden_size=640, vocab_size=262144, rank=8, horizon=4)
    model, tokenizer = tjdkit.load_model("gemma3")
    report = tjdkit.factorize_model(model, tokenizer, tjdkit.FactorizeOptions(method="tucker"))
    results = tjdkit.tnot_generate(model, ids, config=tjdkit.TnotConfig(steps=3))
"""

__version__ = "0.1.0"

# name -> the module that defines it; `tjdkit.<name>` imports it on first use.
_PUBLIC = {
    "load_model": "tjdkit.models",
    "load_run": "tjdkit.training.runs",
    "LoadedRun": "tjdkit.training.runs",
    "build_head": "tjdkit.heads",
    "JointHead": "tjdkit.heads",
    "TJD": "tjdkit.tjd",
    "generate": "tjdkit.decoding",
    "acceptance": "tjdkit.decoding",
    "DecodeStats": "tjdkit.decoding",
    "attach_head": "tjdkit.decoding",
    "detach_head": "tjdkit.decoding",
    "train": "tjdkit.training",
    "evaluate": "tjdkit.evaluation",
    "run_bench": "tjdkit.bench",
    "factorize_model": "tjdkit.factorize",
    "FactorizeOptions": "tjdkit.factorize",
    "save_factorized": "tjdkit.factorize",
    "tnot_generate": "tjdkit.tnot",
    "enable_tnot": "tjdkit.tnot",
    "TnotConfig": "tjdkit.config",
    "load_recipe": "tjdkit.recipes",
    "TjdkitError": "tjdkit.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tjdkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


def _wire_factorized_directories() -> None:
    """models/ never imports factorize/ (it sits below it): the package wires factorize's model
    directories into `load_model` here, at the top, so any import of tjdkit can load them."""
    from tjdkit.models.loading import DirectoryFormat, register_directory_format

    def claims(directory):
        from tjdkit.factorize.saving import needs_rebuild

        return needs_rebuild(directory)

    def load(directory, torch_dtype):
        from tjdkit.factorize.saving import load_factorized

        return load_factorized(directory, torch_dtype)

    def owns_code(config):
        from tjdkit.factorize.saving import owns_code

        return owns_code(config)

    register_directory_format(DirectoryFormat("tjdkit-factorized", claims, load, owns_code))


_wire_factorized_directories()
