"""Safe templating: only our names are substituted; everything else stays literal."""

from graph.templates import referenced_nodes, render, render_value

VARS = {"input": "IN", "user_query": "Q", "user_id": "U", "conversation_id": "C"}


def test_known_names_are_substituted():
    assert render("{input}|{user_query}|{user_id}|{conversation_id}", VARS, {}) == "IN|Q|U|C"


def test_node_outputs_are_substituted():
    assert render("a={node.a} b={node.b-2}", VARS, {"a": "A", "b-2": "B"}) == "a=A b=B"
    assert referenced_nodes("{node.a} {input} {node.b-2}") == ["a", "b-2"]


def test_other_brace_text_stays_literal():
    template = 'JSON {"k": 1} {0} {input.__class__} {inputs} { input } {'
    assert render(template, VARS, {}) == template


def test_double_braces_are_literal_braces():
    assert render("{{input}} {{{input}}}", VARS, {}) == "{input} {IN}"


def test_substituted_values_are_never_rescanned():
    values = {**VARS, "input": "{user_id} {node.a}"}
    assert render("{input}", values, {"a": "SECRET"}) == "{user_id} {node.a}"


def test_render_value_renders_strings_deep_inside_json():
    value = {"to": "{user_id}", "list": ["{input}", 1, None], "nested": {"x": "{{"}}
    assert render_value(value, VARS, {}) == {"to": "U", "list": ["IN", 1, None], "nested": {"x": "{"}}
