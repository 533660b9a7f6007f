"""The objects that travel on PIPELINE_QUANT_CONFIG links: immutable, hashable, JSON round-trip.

They describe *what* the user asked for (backend name + options), never live diffusers config
objects; the planner turns them into real configs at load time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

GLOBAL = "global"
GRANULAR = "granular"


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class BackendSpec:
    """One backend with its options, applied to `components` (None: every nn.Module component)."""

    backend: str
    quant_type: str
    compute_dtype: str = "auto"
    options: tuple[tuple[str, Any], ...] = ()
    components: tuple[str, ...] | None = None
    gguf_file: str | None = None

    kind = GLOBAL

    @classmethod
    def make(
        cls,
        backend: str,
        quant_type: str,
        compute_dtype: str = "auto",
        options: Mapping | None = None,
        components=None,
        gguf_file: str | None = None,
    ) -> "BackendSpec":
        if isinstance(components, str):  # one name, as diffusers' components_to_quantize takes it
            components = (components,)
        return cls(
            backend,
            quant_type,
            compute_dtype,
            _freeze(dict(options or {})),
            tuple(components) if components is not None else None,
            gguf_file or None,
        )

    @property
    def options_dict(self) -> dict:
        return {k: _thaw(v) for k, v in self.options}

    def to_dict(self) -> dict:
        data = {
            "kind": GLOBAL,
            "backend": self.backend,
            "quant_type": self.quant_type,
            "compute_dtype": self.compute_dtype,
            "options": self.options_dict,
            "components": list(self.components) if self.components is not None else None,
        }
        if self.gguf_file:
            data["gguf_file"] = self.gguf_file
        return data

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def without_components(self) -> "BackendSpec":
        """The per-component view: what one component gets, independent of the others."""
        return BackendSpec(self.backend, self.quant_type, self.compute_dtype, self.options, None, self.gguf_file)

    def __str__(self) -> str:
        opts = f" {self.options_dict}" if self.options else ""
        where = f" on {', '.join(self.components)}" if self.components is not None else ""
        dtype = f" ({self.compute_dtype})" if self.compute_dtype != "auto" else ""
        return f"{self.backend}:{self.quant_type}{dtype}{opts}{where}"


@dataclass(frozen=True)
class ComponentMap:
    """Granular mode: component name -> BackendSpec, or None for "leave unquantized"."""

    entries: tuple[tuple[str, BackendSpec | None], ...] = ()

    kind = GRANULAR

    @classmethod
    def make(cls, mapping: Mapping[str, BackendSpec | None]) -> "ComponentMap":
        from ..problems import Problem, ValidationError

        if not isinstance(mapping, Mapping):
            raise ValidationError(
                [
                    Problem(
                        "spec_malformed",
                        "map",
                        f"a component map is built from a mapping of "
                        f"component name to BackendSpec, got {type(mapping).__name__}",
                        'e.g. ComponentMap.make({"transformer": BackendSpec.make(backend, quant_type)})',
                    )
                ]
            )
        for name, spec in mapping.items():
            if not isinstance(name, str) or not (spec is None or isinstance(spec, BackendSpec)):
                raise ValidationError(
                    [
                        Problem(
                            "spec_malformed",
                            f"map[{name!s:.40}]",
                            f"the entry for {name!r:.40} is a {type(spec).__name__}, not a BackendSpec or None",
                            "map each component name to BackendSpec.make(...), or None to leave it unquantized",
                        )
                    ]
                )
        return cls(tuple(sorted((name, spec.without_components() if spec else None) for name, spec in mapping.items())))

    def as_dict(self) -> dict[str, BackendSpec | None]:
        return dict(self.entries)

    def with_entry(self, component: str, spec: BackendSpec | None) -> "ComponentMap":
        """A new map with one more component. Mapping a component twice is an error: in a chain
        of Per-Component Map nodes the user could not tell which one wins."""
        mapping = self.as_dict()
        if component in mapping:
            from ..problems import Problem, ValidationError

            earlier = mapping[component]
            raise ValidationError(
                [
                    Problem(
                        "component_mapped_twice",
                        "component",
                        f'component "{component}" is already mapped upstream in this chain (to {earlier or "unquantized"}); '
                        "neither would silently win",
                        "remove one of the two Per-Component Map nodes for it, or change its component",
                    )
                ]
            )
        mapping[component] = spec
        return ComponentMap.make(mapping)

    def to_dict(self) -> dict:
        return {
            "kind": GRANULAR,
            "components": {name: (spec.to_dict() if spec else None) for name, spec in self.entries},
        }

    def to_json(self) -> str:
        return _canonical(self.to_dict())

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return "; ".join(f"{name} = {spec or 'unquantized'}" for name, spec in self.entries) or "(empty map)"


QuantSpec = BackendSpec | ComponentMap


def spec_from_dict(data: Any) -> QuantSpec:
    """Inverse of `to_dict`; raises ValidationError with a clear message on malformed data."""
    from ..problems import Problem, ValidationError

    def fail(field: str, message: str, suggestion: str) -> ValidationError:
        return ValidationError([Problem("spec_malformed", field, message, suggestion)])

    if not isinstance(data, Mapping):
        raise fail(
            "spec",
            f"a quantization spec must be a JSON object, got {type(data).__name__}",
            'use {"kind": "global", "backend": ..., "quant_type": ...}',
        )
    kind = data.get("kind", GLOBAL)
    if kind == GRANULAR and "backend" in data:
        raise fail(
            "kind",
            "a spec cannot be both granular (a components map) and global (a backend)",
            'drop "backend", or use "kind": "global"',
        )
    if kind == GRANULAR:
        components = data.get("components")
        if not isinstance(components, Mapping):
            raise fail("components", 'a granular spec needs a "components" object', 'e.g. {"transformer": {...}}')
        for k, v in components.items():
            if v is not None and not isinstance(v, Mapping):
                raise fail(
                    f"components.{k}",
                    f'the spec for component "{k}" must be an object or null, got {type(v).__name__}',
                    '{"backend": ..., "quant_type": ...}, or null to leave it unquantized',
                )
        return ComponentMap.make(
            {str(k): (spec_from_dict({**v, "kind": GLOBAL}) if v is not None else None) for k, v in components.items()}
        )
    if kind != GLOBAL:
        raise fail("kind", f'unknown spec kind "{kind}"', 'use "global" or "granular"')
    for key in ("backend", "quant_type"):
        if not isinstance(data.get(key), str):
            raise fail(key, f'"{key}" must be a string', f'set "{key}"')
    options = data.get("options") or {}
    if not isinstance(options, Mapping):
        raise fail("options", '"options" must be a JSON object', 'e.g. {"double_quant": true}')
    components = data.get("components")
    if components is not None and (not isinstance(components, list) or not all(isinstance(c, str) for c in components)):
        raise fail("components", '"components" must be a list of names or null', '["transformer", "text_encoder_2"]')
    compute_dtype = data.get("compute_dtype", "auto")
    gguf_file = data.get("gguf_file")
    if not isinstance(compute_dtype, str) or (gguf_file is not None and not isinstance(gguf_file, str)):
        raise fail("compute_dtype", '"compute_dtype" and "gguf_file" must be strings', '"bfloat16"')
    return BackendSpec.make(data["backend"], data["quant_type"], compute_dtype, options, components, gguf_file)


def spec_from_json(text: str) -> QuantSpec:
    from ..problems import Problem, ValidationError

    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            [Problem("spec_malformed", "spec", f"not valid JSON: {exc}", "pass the output of to_json()")]
        )
    return spec_from_dict(data)
