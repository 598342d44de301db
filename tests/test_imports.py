import collections
import doctest

import pytest

import ganno_lightning.imports
from ganno_lightning.imports import import_callable, import_object


def test_names_a_module_attribute_and_a_dotted_attribute():
    assert import_object("collections:OrderedDict") is collections.OrderedDict
    assert import_object("collections:OrderedDict.fromkeys") == collections.OrderedDict.fromkeys
    assert import_object("helpers:TinyRegressor").__name__ == "TinyRegressor"  # tests/ is on sys.path


@pytest.mark.parametrize("path", ["collections.OrderedDict", "collections:", ":OrderedDict", "a:b:c", "", None, 3])
def test_malformed_paths_name_the_argument_and_the_form(path):
    with pytest.raises(ValueError, match=r"`factory` must be an import path 'package.module:attr', got "):
        import_object(path, argument="factory")


def test_a_module_that_cannot_be_imported_is_named():
    with pytest.raises(ValueError, match=r"`task` 'no_such_pkg.models:make': cannot import module 'no_such_pkg.models' "
                                         r"\(No module named 'no_such_pkg'\)\. Is its package installed"):
        import_object("no_such_pkg.models:make", argument="task")


def test_an_import_failing_inside_the_module_is_not_blamed_on_the_path(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as err:
        import_object("user_models:Model", argument="task")
    assert "No module named 'no_such_dependency'" in str(err.value)
    assert "PYTHONPATH" not in str(err.value)


def test_import_callable_takes_a_callable_or_a_string_naming_one():
    assert import_callable(dict, argument="factory") is dict
    assert import_callable("collections:OrderedDict", argument="factory").__name__ == "OrderedDict"
    with pytest.raises(ValueError, match=r"`factory` 'math:pi' names a float, not a class or function"):
        import_callable("math:pi", argument="factory")
    with pytest.raises(TypeError, match=r"`factory` must be a class or function .* got 42"):
        import_callable(42, argument="factory")


def test_a_missing_attribute_names_its_owner():
    with pytest.raises(ValueError, match=r"`path` 'collections:OrderedDict.nope': 'collections.OrderedDict' has no "
                                         r"attribute 'nope'\."):
        import_object("collections:OrderedDict.nope")
    with pytest.raises(ValueError, match=r"'collections' has no attribute 'Nope'\."):
        import_object("collections:Nope")


def test_docstring_examples():
    result = doctest.testmod(ganno_lightning.imports, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
