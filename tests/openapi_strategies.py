"""Hypothesis strategies for the JSON Schemas of an OpenAPI document (what pydantic and FastAPI
write: objects, anyOf with null, enums, strings, integers, numbers with bounds, arrays, $ref).

``valid(schema, doc)`` draws bodies the schema accepts; ``invalid(schema, doc)`` draws bodies it
refuses (a missing required field, an unknown field, a wrong type, a value out of range) or any
JSON at all."""

from __future__ import annotations

from hypothesis import strategies as st

__all__ = ["valid", "invalid"]

_ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                         | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                         max_leaves=6)


def _resolve(schema: dict, doc: dict) -> dict:
    while "$ref" in schema:
        node = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def valid(schema: dict, doc: dict) -> st.SearchStrategy:
    s = _resolve(schema, doc)
    if "anyOf" in s:
        return st.one_of([valid(x, doc) for x in s["anyOf"]])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "const" in s:
        return st.just(s["const"])
    t = s.get("type")
    if t == "null":
        return st.none()
    if t == "boolean":
        return st.booleans()
    if t == "string":
        return st.text(min_size=s.get("minLength", 0), max_size=min(s.get("maxLength", 20), 20))
    if t in ("integer", "number"):
        lo = s.get("minimum", s.get("exclusiveMinimum", -10**6))
        hi = s.get("maximum", s.get("exclusiveMaximum", 10**6))
        if t == "integer":
            lo += 1 if "exclusiveMinimum" in s else 0
            hi -= 1 if "exclusiveMaximum" in s else 0
            return st.integers(int(lo), int(hi))
        return st.floats(lo, hi, exclude_min="exclusiveMinimum" in s, exclude_max="exclusiveMaximum" in s,
                         allow_nan=False)
    if t == "array":
        return st.lists(valid(s.get("items", {}), doc), min_size=s.get("minItems", 0),
                        max_size=min(s.get("maxItems", 5), 5))
    if t == "object" or "properties" in s:
        props, required = s.get("properties", {}), set(s.get("required", ()))
        return st.fixed_dictionaries({k: valid(v, doc) for k, v in props.items() if k in required},
                                     optional={k: valid(v, doc) for k, v in props.items() if k not in required})
    return _ANY_JSON


def _wrong_type(s: dict) -> st.SearchStrategy:
    t = s.get("type")
    others = {"string": st.integers() | st.booleans(), "integer": st.booleans() | st.text(max_size=3) | st.floats(0.5, 0.5),
              "number": st.booleans() | st.text(max_size=3), "boolean": st.integers() | st.text(max_size=3),
              "array": st.integers() | st.text(max_size=3), "object": st.lists(st.integers(), max_size=2)}
    return others.get(t, st.booleans() if "enum" in s else _ANY_JSON)


def _out_of_range(s: dict) -> st.SearchStrategy | None:
    if "maximum" in s or "exclusiveMaximum" in s:
        hi = s.get("maximum", s.get("exclusiveMaximum"))
        return st.just(int(hi) + 1 if s.get("type") == "integer" else float(hi) + 1.0)
    if "maxLength" in s:
        return st.just("x" * (s["maxLength"] + 1))
    if "enum" in s:
        return st.just("not-one-of-them")
    return None


def invalid(schema: dict, doc: dict) -> st.SearchStrategy:
    s = _resolve(schema, doc)
    props, required = s.get("properties", {}), sorted(s.get("required", ()))
    base = valid(s, doc)
    options = [base.map(lambda b: {**b, "not_a_field": 1}), _ANY_JSON.filter(lambda v: not isinstance(v, dict))]
    if required:
        options.append(base.flatmap(lambda b: st.sampled_from(required).map(
            lambda k: {kk: vv for kk, vv in b.items() if kk != k})))
    for name, p in props.items():
        p = _resolve(p, doc)
        leaf = next((x for x in p.get("anyOf", [p]) if x.get("type") != "null"), p)
        bad = [_wrong_type(_resolve(leaf, doc))]
        if (oor := _out_of_range(_resolve(leaf, doc))) is not None:
            bad.append(oor)
        options.append(st.tuples(base, st.one_of(bad)).map(lambda bv, name=name: {**bv[0], name: bv[1]}))
    return st.one_of(options)
