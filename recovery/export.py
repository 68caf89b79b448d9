"""The recovered graph in forms other tools read: model-card metadata, GraphML and Graphviz DOT.

All three are built from the tree.json dict alone (docs/tree.schema.json), so they can be regenerated from a saved
tree.json with ``write_exports(json.load(open("tree.json")), folder)``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping
from xml.sax.saxutils import escape, quoteattr

from common.io import write_text

SCHEMA_VERSION = 1
_PLAIN_YAML = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")


def _yaml_str(value: str) -> str:
    """A YAML scalar: bare when it is a plain id, else JSON-quoted (valid YAML)."""
    return value if _PLAIN_YAML.match(value) and value.lower() not in ("true", "false", "null", "yes", "no") \
        else json.dumps(value)


def model_card_lines(node: Mapping[str, Any]) -> str:
    """The Hugging Face model-card metadata of one tree.json node ("" for a root: it has no base model here)."""
    if node.get("base_model") is None:
        return ""
    return (f"base_model: {_yaml_str(str(node['base_model']))}\n"
            f"base_model_relation: {node.get('base_model_relation', 'finetune')}")


def model_cards_markdown(doc: Mapping[str, Any]) -> str:
    """Every model's model-card lines, ready to paste into the YAML front matter of its README.md."""
    out = ["# Model-card metadata recovered by mother", "",
           "Paste each block into the YAML front matter (between the `---` lines) of the model's README.md on the",
           "Hugging Face Hub. `base_model` must be a Hub repo id: where an id below is a local file or folder name,",
           "replace it by the repo that model was published as. Roots have no `base_model` line: they are base",
           "models, or their parent is not among the recovered models.", ""]
    for node in sorted(doc["nodes"], key=lambda n: n["id"]):
        lines = node.get("model_card", model_card_lines(node))
        for mid in node.get("ids", [node["id"]]):
            out.append(f"## {mid}")
            if mid != node["id"]:
                out.append(f"(a duplicate of {node['id']}: same weights, same metadata)")
            out += (["```yaml", lines, "```"] if lines else ["root: no `base_model` line"]) + [""]
    return "\n".join(out)


def _dot_id(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(doc: Mapping[str, Any]) -> str:
    """Graphviz DOT: one subgraph per recovered tree, edges parent -> child labelled with their relation."""
    lines = ["digraph mother {", "  rankdir=TB;", "  node [shape=box];"]
    by_cluster: dict[int, list[Mapping]] = {}
    for node in doc["nodes"]:
        by_cluster.setdefault(int(node["cluster"]), []).append(node)
    for k in sorted(by_cluster):
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f"    label={_dot_id(f'tree {k}')};")
        for node in by_cluster[k]:
            label = "\\n".join(str(i).replace('"', '\\"') for i in node.get("ids", [node["id"]]))
            lines.append(f"    {_dot_id(node['id'])} [label=\"{label}\", stage={_dot_id(node['stage'])}"
                         f"{', peripheries=2' if node.get('root') else ''}];")
        lines.append("  }")
    for e in doc["edges"]:
        lines.append(f"  {_dot_id(e['parent'])} -> {_dot_id(e['child'])} [label={_dot_id(e['base_model_relation'])}, "
                     f"distance={float(e['distance']):.6g}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


_NODE_KEYS = (("cluster", "int"), ("direction_score", "double"), ("stage", "string"), ("root", "boolean"),
              ("depth", "int"), ("ids", "string"), ("base_model", "string"), ("base_model_relation", "string"))
_EDGE_KEYS = (("distance", "double"), ("l2", "double"), ("base_model_relation", "string"))


def _graphml_value(value: Any, kind: str) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if isinstance(value, list):
        return escape(",".join(map(str, value)))
    return escape(str(value))


def to_graphml(doc: Mapping[str, Any]) -> str:
    """GraphML (directed): node and edge attributes as typed keys; `ids` lists a node's duplicates, comma-joined."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">']
    for i, (name, kind) in enumerate(_NODE_KEYS):
        out.append(f'  <key id="n{i}" for="node" attr.name="{name}" attr.type="{kind}"/>')
    for i, (name, kind) in enumerate(_EDGE_KEYS):
        out.append(f'  <key id="e{i}" for="edge" attr.name="{name}" attr.type="{kind}"/>')
    out.append('  <graph id="mother" edgedefault="directed">')
    for node in doc["nodes"]:
        out.append(f"    <node id={quoteattr(str(node['id']))}>")
        for i, (name, kind) in enumerate(_NODE_KEYS):
            value = node.get(name)
            if value is not None:
                out.append(f'      <data key="n{i}">{_graphml_value(value, kind)}</data>')
        out.append("    </node>")
    for k, e in enumerate(doc["edges"]):
        out.append(f"    <edge id=\"e{k}\" source={quoteattr(str(e['parent']))} target={quoteattr(str(e['child']))}>")
        for i, (name, kind) in enumerate(_EDGE_KEYS):
            if e.get(name) is not None:
                out.append(f'      <data key="e{i}">{_graphml_value(e[name], kind)}</data>')
        out.append("    </edge>")
    out += ["  </graph>", "</graphml>"]
    return "\n".join(out) + "\n"


def write_exports(doc: Mapping[str, Any], folder: str | Path) -> dict[str, str]:
    """Write tree.graphml, tree.dot and model_cards.md into `folder` (atomically); return {name: path}."""
    folder = Path(folder)
    return {"graphml": str(write_text(folder / "tree.graphml", to_graphml(doc))),
            "dot": str(write_text(folder / "tree.dot", to_dot(doc))),
            "model_cards": str(write_text(folder / "model_cards.md", model_cards_markdown(doc)))}
