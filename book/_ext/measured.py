"""Quote a number from another page's executed output, with a link to the cell that printed it.

A page that sums up what the chapters measured (the "which method should I use" guide) must not
type their numbers: a chapter prints different numbers in the ``ci``, ``cpu`` and ``gpu`` profiles,
and a typed number goes stale the day the chapter changes. So it quotes them::

    LoRA {measured}`lora-claim-check: closes \\S+ of the frozen-to-full gap`.

``lora-claim-check`` is a MyST target (``(lora-claim-check)=``) in a chapter, before a section or a
code cell; the text after the colon is a regular expression searched in the text outputs of that
section or cell, as this very build executed them. The role renders the first match, verbatim, as a
link to the target: the reader sees the chapter's own words and can click through to the cell.
A target that does not exist, or a pattern that matches no output, is a build error naming both
(and, for the pattern, the outputs it was searched in), so a chapter that changes its wording
cannot leave the guide quoting something it no longer prints.

The quoting page is written after every chapter has been read (Sphinx resolves references once all
sources are read), and it is re-read whenever another page changes, so its quotes are always those
of the chapters in the same build.
"""

from __future__ import annotations

import re

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxRole


class measured_quote(nodes.Inline, nodes.Element):
    """Placeholder until the write phase, when every chapter's doctree exists."""


class MeasuredRole(SphinxRole):
    def run(self):
        label, sep, pattern = self.text.partition(":")
        if not sep or not label.strip() or not pattern.strip():
            msg = self.inliner.reporter.error(
                f"measured role needs 'label: pattern', got {self.text!r}", line=self.lineno
            )
            return [self.inliner.problematic(self.rawtext, self.rawtext, msg)], [msg]
        try:
            re.compile(pattern.strip())
        except re.error as error:
            msg = self.inliner.reporter.error(f"measured role: bad pattern {pattern.strip()!r}: {error}")
            return [self.inliner.problematic(self.rawtext, self.rawtext, msg)], [msg]
        pages = getattr(self.env, "measured_pages", set())
        pages.add(self.env.docname)
        self.env.measured_pages = pages
        node = measured_quote(label=label.strip().lower(), pattern=pattern.strip(), source_line=self.lineno)
        return [node], []


def _outputs(node: nodes.Node) -> list[str]:
    """Text outputs (streams and text/plain results) of the cells in ``node``."""
    texts = []
    for block in node.findall(nodes.literal_block):
        classes = set(block.get("classes", []))
        if "output" in classes or "stream" in classes or "text_plain" in classes:
            texts.append(block.astext())
    return texts


def _scope(doctree: nodes.document, labelid: str) -> nodes.Node | None:
    """What a target names: its section, or the cell (or block) that follows it."""
    for node in doctree.findall(nodes.Element):
        if labelid not in node.get("ids", []):
            continue
        if isinstance(node, nodes.target) and node.parent is not None:  # an unpropagated target
            siblings = node.parent.children
            following = siblings[siblings.index(node) + 1 :]
            return next((s for s in following if not isinstance(s, nodes.target)), None)
        return node
    return None


def resolve(app, doctree: nodes.document, docname: str) -> None:
    env = app.env
    labels = env.domaindata["std"]["anonlabels"]
    for node in list(doctree.findall(measured_quote)):
        label, pattern = node["label"], node["pattern"]
        where = f"{env.doc2path(docname)}:{node['source_line']}"
        if label not in labels:
            raise ExtensionError(f"{where}: measured quote names target {label!r}, which no page defines")
        target_doc, labelid = labels[label]
        scope = _scope(env.get_doctree(target_doc), labelid)
        texts = _outputs(scope) if scope is not None else []
        # Whitespace-insensitive: a chapter may wrap a long line of output where the pattern has a space.
        texts = [" ".join(text.split()) for text in texts]
        match = next((m for text in texts for m in [re.search(pattern, text)] if m), None)
        if match is None:
            shown = "\n---\n".join(texts) or "(no text outputs)"
            raise ExtensionError(
                f"{where}: no output under {label!r} ({target_doc}) matches {pattern!r}; the outputs there:\n{shown}"
            )
        uri = app.builder.get_relative_uri(docname, target_doc) + "#" + labelid
        link = nodes.reference("", "", internal=True, refuri=uri, classes=["measured"])
        link += nodes.Text(match.group(0))
        node.replace_self(link)


def outdated(app, env, added, changed, removed):
    """A quoting page is re-read whenever another page changed: its quotes may have."""
    pages = getattr(env, "measured_pages", set())
    if not (added | changed | removed) - pages:
        return []
    return sorted(page for page in pages if page in env.all_docs)


def purge(app, env, docname):
    getattr(env, "measured_pages", set()).discard(docname)


def merge(app, env, docnames, other):
    env.measured_pages = getattr(env, "measured_pages", set()) | (getattr(other, "measured_pages", set()) & docnames)


def setup(app):
    app.add_node(measured_quote)
    app.add_role("measured", MeasuredRole())
    app.connect("doctree-resolved", resolve)
    app.connect("env-get-outdated", outdated)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
