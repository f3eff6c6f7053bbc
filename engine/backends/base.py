from dataclasses import dataclass

MODES = ["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
DYNAMIC_CHOICES = ["auto", "true", "false"]


@dataclass(frozen=True)
class CompileOptions:
    mode: str = "default"
    dynamic: str = "auto"          # auto: static first, dynamic after the first shape change (torch's default)
    fullgraph: bool = False
    context: str = ""              # what else shapes the traced code (the caller's attention choice): keys caches

    def torch_compile_kwargs(self):
        kwargs = {"fullgraph": self.fullgraph,
                  "dynamic": {"auto": None, "true": True, "false": False}[str(self.dynamic).lower()]}
        if self.mode != "default":
            kwargs["mode"] = self.mode
        return kwargs


class Backend:
    name = "?"

    def available(self):
        raise NotImplementedError

    def compile(self, module, options: CompileOptions):
        raise NotImplementedError
