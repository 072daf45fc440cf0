"""Tests for the FCStd parser in examples/freecad_pipeline/fcstd.py.

The corpus tests run over the shared FreeCAD corpus (real public documents plus
three damaged copies) and skip when that folder is absent. The other tests
build small FCStd archives in tmp_path.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PARSER_PATH = REPO_ROOT / "examples" / "freecad_pipeline" / "fcstd.py"
CORPUS_DIR = REPO_ROOT.parent / "shared" / "data" / "freecad"
MANIFEST_PATH = CORPUS_DIR / "MANIFEST.tsv"

# Damaged corpus files and the error kind each must raise.
BROKEN_FILE_KINDS = {
    "broken_Zolko-123__FreeCAD_Assembly4__Crankshaft.FCStd": "bad_zip",
    "broken_NJJaeger__Open-Water__deliv_Funnels_V3.FCStd": "missing_document_xml",
    "broken_goeland86__MonsterKossel__Bed.FCStd": "malformed_xml",
}


def _load_parser() -> ModuleType:
    # examples/ is not a package, so the module is loaded from its path.
    spec = importlib.util.spec_from_file_location("freecad_pipeline_fcstd", PARSER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fcstd = _load_parser()


def _manifest_rows() -> dict[str, dict[str, str]]:
    if not MANIFEST_PATH.is_file():
        return {}
    with MANIFEST_PATH.open(newline="", encoding="utf-8") as stream:
        return {row["file"]: row for row in csv.DictReader(stream, delimiter="\t")}


MANIFEST = _manifest_rows()
VALID_FILES = sorted(name for name in MANIFEST if not name.startswith("broken_"))

needs_corpus = pytest.mark.skipif(
    not MANIFEST, reason=f"FreeCAD corpus not found: {MANIFEST_PATH} is missing, so corpus tests are skipped"
)


@functools.cache
def _parse_corpus_file(name: str):
    return fcstd.parse_fcstd(CORPUS_DIR / name)


def _write_fcstd(directory: Path, document_xml: str | bytes, name: str = "model.FCStd") -> Path:
    path = directory / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Document.xml", document_xml)
        archive.writestr("GuiDocument.xml", "<Document/>")
    return path


# Corpus


@needs_corpus
def test_corpus_lists_valid_and_broken_files():
    assert len(VALID_FILES) > 0
    for name in BROKEN_FILE_KINDS:
        assert name in MANIFEST


@needs_corpus
@pytest.mark.parametrize("name", VALID_FILES)
def test_valid_file_parses(name):
    parsed = _parse_corpus_file(name)

    assert parsed.content["model_name"] == Path(name).stem
    assert parsed.model_type in ("part", "assembly")
    assert parsed.feature_types == sorted(set(parsed.feature_types))
    assert parsed.quality is parsed.content["serialization_quality"]
    json.dumps(parsed.content, allow_nan=False)


@needs_corpus
@pytest.mark.parametrize("name", VALID_FILES)
def test_feature_count_matches_manifest(name):
    parsed = _parse_corpus_file(name)
    expected = int(MANIFEST[name]["object_types_count"])

    assert parsed.feature_count == expected
    assert len(parsed.content["features"]) == expected
    assert parsed.quality["total_features"] == expected


@needs_corpus
@pytest.mark.parametrize("name", VALID_FILES)
def test_metadata_matches_manifest(name):
    metadata = _parse_corpus_file(name).content["metadata"]

    assert metadata["sha256"] == MANIFEST[name]["sha256"]
    assert metadata["file_size_bytes"] == int(MANIFEST[name]["bytes"])
    assert metadata["program_version"]
    assert metadata["schema_version"] == 4


@needs_corpus
@pytest.mark.parametrize("name", VALID_FILES)
def test_coverage_within_bounds(name):
    quality = _parse_corpus_file(name).quality
    coverage = quality["element_coverage"]

    if quality["meaningful_features"] == 0:
        assert coverage is None
    else:
        assert isinstance(coverage, float)
        assert 0.0 <= coverage <= 100.0


@needs_corpus
@pytest.mark.parametrize("name", VALID_FILES)
def test_quality_counts_add_up(name):
    parsed = _parse_corpus_file(name)
    quality = parsed.quality
    features = parsed.content["features"]
    total = quality["total_features"]
    unknown = [feature for feature in features if feature["type"] == fcstd.UNKNOWN_TYPE]

    assert 0 <= quality["features_with_elements"] <= total
    assert quality["group_features"] + quality["analysis_features"] + quality["meaningful_features"] == total
    assert quality["recoverable_unknown"] + quality["unrecoverable_unknown"] == len(unknown)
    assert len(unknown) <= quality["meaningful_features"]
    for feature in features:
        assert feature["element_tree"]["element_count"] == len(feature["element_tree"]["elements"])


@needs_corpus
@pytest.mark.parametrize("name", VALID_FILES)
def test_features_have_pipeline_fields(name):
    for feature in _parse_corpus_file(name).content["features"]:
        assert isinstance(feature["id"], int)
        assert feature["name"]
        assert feature["freecad_type"]
        mapped = fcstd.map_freecad_type(feature["freecad_type"], feature["python_class"])
        assert (feature["type"], feature["type_id"]) == mapped
        assert feature["name"] not in feature["references"]


@needs_corpus
@pytest.mark.parametrize(("name", "kind"), sorted(BROKEN_FILE_KINDS.items()))
def test_broken_file_raises_expected_kind(name, kind):
    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(CORPUS_DIR / name)

    assert raised.value.kind == kind
    assert name in str(raised.value)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "model_type"),
    [
        ("Zolko-123__FreeCAD_Assembly4__asm_V4.FCStd", "assembly"),
        ("Fox-Wood__Router-Table__Assembly.FCStd", "assembly"),
        ("hamish2014__FreeCAD_assembly2__testAssembly_08.fcstd", "assembly"),
        ("zayats1__AstroCameraMountModel__Assembly.FCStd", "assembly"),
        ("Zolko-123__FreeCAD_Assembly4__Piston.FCStd", "part"),
        ("bgitego__Freecad__DC_Motor.FCStd", "part"),
    ],
)
def test_model_type_of_known_files(name, model_type):
    if name not in MANIFEST:
        pytest.skip(f"{name} is not in the corpus")
    assert _parse_corpus_file(name).model_type == model_type


@needs_corpus
def test_empty_document_has_no_coverage():
    name = "bgitego__Freecad__Gimball_Assembly.FCStd"
    if name not in MANIFEST:
        pytest.skip(f"{name} is not in the corpus")
    parsed = _parse_corpus_file(name)

    assert parsed.feature_count == 0
    assert parsed.quality["element_coverage"] is None
    assert parsed.feature_types == []


# Hand-made documents

SAMPLE_DOCUMENT = """<?xml version='1.0' encoding='utf-8'?>
<Document SchemaVersion="4" ProgramVersion="1.0R39319 (Git)" FileVersion="1">
  <Properties Count="4" TransientCount="1">
    <_Property name="FileName" type="App::PropertyString" status="50331649"/>
    <Property name="CreatedBy" type="App::PropertyString"><String value=""/></Property>
    <Property name="CreationDate" type="App::PropertyString"><String value="2024-06-11T10:00:00Z"/></Property>
    <Property name="Label" type="App::PropertyString"><String value="Sample part"/></Property>
    <Property name="LastModifiedDate" type="App::PropertyString"><String value="2024-06-12T09:30:00Z"/></Property>
  </Properties>
  <Objects Count="10" Dependencies="1">
    <ObjectDeps Name="Body" Count="1"><Dep Name="Pad"/></ObjectDeps>
    <Object type="PartDesign::Body" name="Body" id="10"/>
    <Object type="App::Origin" name="Origin" id="11"/>
    <Object type="App::Plane" name="XY_Plane" id="12"/>
    <Object type="Sketcher::SketchObject" name="Sketch" id="13"/>
    <Object type="PartDesign::Pad" name="Pad" id="14"/>
    <Object type="Spreadsheet::Sheet" name="Params" id="15"/>
    <Object type="Part::FeaturePython" name="Gizmo" id="16"/>
    <Object type="App::FeaturePython" name="Opaque" id="17"/>
    <Object type="Mesh::Feature" name="Ghost" id="18"/>
    <Object type="Part::Part2DObjectPython" name="Wire" id="19"/>
  </Objects>
  <ObjectData Count="9">
    <Object name="Body">
      <Properties Count="4" TransientCount="1">
        <_Property name="_GroupTouched" type="App::PropertyBool" status="100663425"/>
        <Property name="Group" type="App::PropertyLinkList">
          <LinkList count="2"><Link value="Sketch"/><Link value="Pad"/></LinkList>
        </Property>
        <Property name="Label" type="App::PropertyString"><String value="Main body"/></Property>
        <Property name="Origin" type="App::PropertyLink"><Link value="Origin"/></Property>
        <Property name="Tip" type="App::PropertyLink"><Link value="Pad"/></Property>
      </Properties>
    </Object>
    <Object name="Origin">
      <Properties Count="1">
        <Property name="OriginFeatures" type="App::PropertyLinkList">
          <LinkList count="1"><Link value="XY_Plane"/></LinkList>
        </Property>
      </Properties>
    </Object>
    <Object name="XY_Plane">
      <Properties Count="2">
        <Property name="Label" type="App::PropertyString"><String value="XY_Plane"/></Property>
        <Property name="Placement" type="App::PropertyPlacement">
          <PropertyPlacement Px="0" Py="0" Pz="5" Q0="0" Q1="0" Q2="0" Q3="1"/>
        </Property>
      </Properties>
    </Object>
    <Object name="Sketch">
      <Properties Count="4">
        <Property name="AttachmentSupport" type="App::PropertyLinkSubList">
          <LinkSubList count="1"><Link obj="XY_Plane" sub=""/></LinkSubList>
        </Property>
        <Property name="Constraints" type="Sketcher::PropertyConstraintList">
          <ConstraintList count="3"><Constrain Name="" Type="1"/><Constrain Name="" Type="2"/><Constrain Name="" Type="6"/></ConstraintList>
        </Property>
        <Property name="ExpressionEngine" type="App::PropertyExpressionEngine">
          <ExpressionEngine count="1"><Expression path="Constraints[2]" expression="Params.width"/></ExpressionEngine>
        </Property>
        <Property name="Geometry" type="Part::PropertyGeometryList">
          <GeometryList count="2"><Geometry type="Part::GeomLineSegment"/><Geometry type="Part::GeomCircle"/></GeometryList>
        </Property>
      </Properties>
    </Object>
    <Object name="Pad">
      <Properties Count="6">
        <Property name="Length" type="App::PropertyLength"><Float value="12.5"/></Property>
        <Property name="Placement" type="App::PropertyPlacement">
          <PropertyPlacement Px="1" Py="2" Pz="3" Q0="0" Q1="0" Q2="0.7071067811865476" Q3="0.7071067811865475" A="1.5707963267948966" Ox="0" Oy="0" Oz="1"/>
        </Property>
        <Property name="Profile" type="App::PropertyLinkSub">
          <LinkSub value="Sketch" count="1"><Sub value=""/></LinkSub>
        </Property>
        <Property name="Reversed" type="App::PropertyBool"><Bool value="false"/></Property>
        <Property name="Shape" type="Part::PropertyPartShape"><Part file="Pad.Shape.brp"/></Property>
        <Property name="Type" type="App::PropertyEnumeration"><Integer value="0"/></Property>
        <Property name="Mode" type="App::PropertyEnumeration">
          <Integer value="1" CustomEnum="true"/>
          <CustomEnumList count="2"><Enum value="Dimension"/><Enum value="UpToFace"/></CustomEnumList>
        </Property>
      </Properties>
    </Object>
    <Object name="Params">
      <Properties Count="1">
        <Property name="cells" type="Spreadsheet::PropertySheet">
          <Cells Count="2" xlink="1">
            <XLinks count="0"></XLinks>
            <Cell address="A1" content="Width"/>
            <Cell address="B1" content="12.5" displayUnit="mm" alias="width"/>
          </Cells>
        </Property>
      </Properties>
    </Object>
    <Object name="Gizmo">
      <Properties Count="3">
        <Property name="Proxy" type="App::PropertyPythonObject">
          <Python value="bnVsbA==" encoded="yes" module="mywb.things" class="Gizmo"/>
        </Property>
        <Property name="Size" type="App::PropertyLength"><Float value="3"/></Property>
        <Property name="Source" type="App::PropertyXLink">
          <XLink file="parts.FCStd" stamp="" name="Box" sub="Face1"/>
        </Property>
      </Properties>
    </Object>
    <Object name="Opaque">
      <Properties Count="3">
        <Property name="Label" type="App::PropertyString"><String value="Opaque thing"/></Property>
        <Property name="Proxy" type="App::PropertyPythonObject">
          <Python value="gANjX19tYWluX18KWAp0" encoded="yes" module="secret" class="Thing"/>
        </Property>
        <Property name="Visibility" type="App::PropertyBool"><Bool value="true"/></Property>
      </Properties>
    </Object>
    <Object name="Wire">
      <Properties Count="2">
        <Property name="Closed" type="App::PropertyBool"><Bool value="true"/></Property>
        <Property name="Proxy" type="App::PropertyPythonObject">
          <Python value="IldpcmUi" encoded="yes" module="draftobjects.wire" class="Wire"/>
        </Property>
      </Properties>
    </Object>
  </ObjectData>
</Document>
"""


def _features_by_name(parsed) -> dict[str, dict]:
    return {feature["name"]: feature for feature in parsed.content["features"]}


def test_sample_quality_counts(tmp_path):
    parsed = fcstd.parse_fcstd(_write_fcstd(tmp_path, SAMPLE_DOCUMENT))

    assert parsed.quality == {
        "total_features": 10,
        "features_with_elements": 8,
        "element_coverage": 71.43,
        "meaningful_features": 7,
        "group_features": 2,
        "analysis_features": 1,
        "recoverable_unknown": 1,
        "unrecoverable_unknown": 2,
    }
    assert parsed.feature_count == 10
    assert parsed.model_type == "part"
    assert parsed.feature_types == [
        "ANALYSIS",
        "CURVE",
        "DATUM_PLANE",
        "GROUP",
        "PROTRUSION",
        "SKETCH",
        "UNKNOWN",
    ]


def test_sample_feature_mapping(tmp_path):
    features = _features_by_name(fcstd.parse_fcstd(_write_fcstd(tmp_path, SAMPLE_DOCUMENT)))

    assert (features["Pad"]["type"], features["Pad"]["type_id"]) == ("PROTRUSION", 917)
    assert (features["Sketch"]["type"], features["Sketch"]["type_id"]) == ("SKETCH", 949)
    assert (features["Body"]["type"], features["Body"]["type_id"]) == ("GROUP", 1104)
    assert (features["Params"]["type"], features["Params"]["type_id"]) == ("ANALYSIS", 1232)
    assert (features["Wire"]["type"], features["Wire"]["type_id"]) == ("CURVE", 946)
    assert features["Wire"]["python_class"] == "draftobjects.wire.Wire"
    assert (features["Gizmo"]["type"], features["Gizmo"]["type_id"]) == ("UNKNOWN", None)
    assert features["Gizmo"]["freecad_type"] == "Part::FeaturePython"
    assert features["Pad"]["id"] == 14
    assert features["Body"]["label"] == "Main body"


def test_sample_pad_elements(tmp_path):
    pad = _features_by_name(fcstd.parse_fcstd(_write_fcstd(tmp_path, SAMPLE_DOCUMENT)))["Pad"]
    values = {element["name"]: element["value"] for element in pad["element_tree"]["elements"]}

    assert pad["element_tree"]["element_count"] == 7
    assert values["Length"] == 12.5
    assert values["Reversed"] is False
    assert values["Type"] == 0
    assert values["Mode"] == "UpToFace"
    assert values["Profile"] == {"object": "Sketch", "subelements": [""]}
    assert values["Shape"] == {"file": "Pad.Shape.brp"}
    assert pad["references"] == ["Sketch"]
    assert pad["feature_geometry"]["position"] == [1.0, 2.0, 3.0]
    assert pad["feature_geometry"]["axis"] == [0.0, 0.0, 1.0]
    assert pad["feature_geometry"]["angle_rad"] == pytest.approx(1.5707963267948966)


def test_sample_unknown_features(tmp_path):
    features = _features_by_name(fcstd.parse_fcstd(_write_fcstd(tmp_path, SAMPLE_DOCUMENT)))

    # The proxy state is opaque, so only Size and Source become elements.
    assert [element["name"] for element in features["Gizmo"]["element_tree"]["elements"]] == ["Size", "Source"]
    assert features["Gizmo"]["references"] == ["parts.FCStd#Box"]
    assert features["Opaque"]["element_tree"]["element_count"] == 0
    assert features["Opaque"]["python_class"] == "secret.Thing"
    assert features["Ghost"]["element_tree"]["element_count"] == 0
    assert features["Ghost"]["feature_geometry"] is None


def test_sample_side_sections(tmp_path):
    content = fcstd.parse_fcstd(_write_fcstd(tmp_path, SAMPLE_DOCUMENT)).content

    assert content["sketches"] == [{"name": "Sketch", "geometry_count": 2, "constraint_count": 3}]
    assert content["groups"] == [
        {"name": "Body", "freecad_type": "PartDesign::Body", "members": ["Sketch", "Pad"]},
        {"name": "Origin", "freecad_type": "App::Origin", "members": ["XY_Plane"]},
    ]
    assert content["parameters"] == {
        "Params.A1": {"cell": "A1", "content": "Width"},
        "Params.width": {"cell": "B1", "content": "12.5", "alias": "width", "unit": "mm"},
    }
    assert content["relations"] == [
        {"feature": "Sketch", "path": "Constraints[2]", "expression": "Params.width"},
    ]


def test_sample_metadata(tmp_path):
    path = _write_fcstd(tmp_path, SAMPLE_DOCUMENT)
    metadata = fcstd.parse_fcstd(path).content["metadata"]

    assert metadata["program_version"] == "1.0R39319 (Git)"
    assert metadata["schema_version"] == 4
    assert metadata["label"] == "Sample part"
    assert metadata["created_by"] is None
    assert metadata["creation_date"] == "2024-06-11T10:00:00Z"
    assert metadata["last_modified_date"] == "2024-06-12T09:30:00Z"
    assert metadata["file_size_bytes"] == path.stat().st_size
    assert len(metadata["sha256"]) == 64


def test_document_without_ids_uses_positions(tmp_path):
    document = """<?xml version='1.0' encoding='utf-8'?>
<Document SchemaVersion="4" ProgramVersion="0.16R6712 (Git)" FileVersion="1">
  <Properties Count="0"></Properties>
  <Objects Count="2">
    <Object type="Part::Box" name="Box"/>
    <Object type="Part::Cylinder" name="Cylinder"/>
  </Objects>
  <ObjectData Count="2">
    <Object name="Box"><Properties Count="1">
      <Property name="Length" type="App::PropertyLength"><Float value="10"/></Property>
    </Properties></Object>
    <Object name="Cylinder"><Properties Count="1">
      <Property name="Radius" type="App::PropertyLength"><Float value="2"/></Property>
    </Properties></Object>
  </ObjectData>
</Document>
"""
    features = fcstd.parse_fcstd(_write_fcstd(tmp_path, document)).content["features"]

    assert [feature["id"] for feature in features] == [1, 2]


def test_app_link_makes_assembly(tmp_path):
    document = """<?xml version='1.0' encoding='utf-8'?>
<Document SchemaVersion="4" ProgramVersion="0.21R33771 (Git)" FileVersion="1">
  <Properties Count="0"></Properties>
  <Objects Count="1"><Object type="App::Link" name="Bracket" id="1"/></Objects>
  <ObjectData Count="1">
    <Object name="Bracket"><Properties Count="1">
      <Property name="LinkedObject" type="App::PropertyXLink"><XLink file="bracket.FCStd" stamp="" name="Body"/></Property>
    </Properties></Object>
  </ObjectData>
</Document>
"""
    parsed = fcstd.parse_fcstd(_write_fcstd(tmp_path, document))

    assert parsed.model_type == "assembly"
    assert parsed.feature_types == ["COMPONENT"]
    assert parsed.content["features"][0]["references"] == ["bracket.FCStd#Body"]


def test_non_finite_float_stays_string(tmp_path):
    document = """<?xml version='1.0' encoding='utf-8'?>
<Document SchemaVersion="4" ProgramVersion="0.21R33771 (Git)" FileVersion="1">
  <Properties Count="0"></Properties>
  <Objects Count="1"><Object type="Part::Box" name="Box" id="1"/></Objects>
  <ObjectData Count="1">
    <Object name="Box"><Properties Count="1">
      <Property name="Length" type="App::PropertyLength"><Float value="nan"/></Property>
    </Properties></Object>
  </ObjectData>
</Document>
"""
    content = fcstd.parse_fcstd(_write_fcstd(tmp_path, document)).content

    assert content["features"][0]["element_tree"]["elements"][0]["value"] == "nan"
    json.dumps(content, allow_nan=False)


# Damaged and hostile files

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE Document [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Document SchemaVersion="4"><Objects Count="0"/><ObjectData Count="0"/><Comment>&lol9;</Comment></Document>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<Document SchemaVersion="4"><Objects Count="0"/><ObjectData Count="0"/><Comment>&secret;</Comment></Document>
"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE Document SYSTEM "http://127.0.0.1:9/document.dtd">
<Document SchemaVersion="4"><Objects Count="0"/><ObjectData Count="0"/></Document>
"""


@pytest.mark.parametrize(
    "document",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD],
    ids=["billion_laughs", "external_entity", "external_dtd"],
)
def test_unsafe_xml_rejected(tmp_path, document):
    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(_write_fcstd(tmp_path, document))

    assert raised.value.kind == "unsafe_xml"


def test_oversized_document_rejected(tmp_path):
    path = _write_fcstd(tmp_path, SAMPLE_DOCUMENT)

    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(path, max_document_bytes=1000)

    assert raised.value.kind == "too_large"


def test_understated_zip_size_rejected(tmp_path):
    # Patch the uncompressed size in the central directory entry of Document.xml,
    # which zipfile trusts, to a value below the real size.
    path = _write_fcstd(tmp_path, SAMPLE_DOCUMENT)
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    while data[entry + 46 : entry + 46 + len(b"Document.xml")] != b"Document.xml":
        entry = data.find(b"PK\x01\x02", entry + 4)
        assert entry >= 0, "central directory entry of Document.xml not found"
    data[entry + 24 : entry + 28] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))

    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(path)

    assert raised.value.kind == "bad_zip"


def test_not_a_zip_rejected(tmp_path):
    path = tmp_path / "text.FCStd"
    path.write_text("this is not a zip archive")

    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(path)

    assert raised.value.kind == "bad_zip"


def test_zip_without_document_rejected(tmp_path):
    path = tmp_path / "empty.FCStd"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("GuiDocument.xml", "<Document/>")

    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(path)

    assert raised.value.kind == "missing_document_xml"


@pytest.mark.parametrize(
    "document",
    [
        "<Document SchemaVersion='4'><Objects Count='0'>",
        "<?xml version='1.0'?><Model/>",
        "<?xml version='1.0'?><Document SchemaVersion='4'><ObjectData/></Document>",
    ],
    ids=["truncated", "wrong_root", "no_objects_section"],
)
def test_malformed_document_rejected(tmp_path, document):
    with pytest.raises(fcstd.FCStdError) as raised:
        fcstd.parse_fcstd(_write_fcstd(tmp_path, document))

    assert raised.value.kind == "malformed_xml"


def test_error_rejects_unknown_kind():
    with pytest.raises(ValueError):
        fcstd.FCStdError("some reason", "no_such_kind")


def test_type_map_examples():
    assert fcstd.map_freecad_type("PartDesign::Pocket") == ("CUT", 918)
    assert fcstd.map_freecad_type("PartDesign::Hole") == ("HOLE", 919)
    assert fcstd.map_freecad_type("PartDesign::Fillet") == ("ROUND", 920)
    assert fcstd.map_freecad_type("PartDesign::Chamfer") == ("CHAMFER", 921)
    assert fcstd.map_freecad_type("PartDesign::Draft") == ("DRAFT", 922)
    assert fcstd.map_freecad_type("App::Line") == ("DATUM_AXIS", 924)
    assert fcstd.map_freecad_type("PartDesign::Point") == ("DATUM_POINT", 925)
    assert fcstd.map_freecad_type("PartDesign::CoordinateSystem") == ("CSYS", 979)
    assert fcstd.map_freecad_type("PartDesign::Groove") == ("REVOLVE", 942)
    assert fcstd.map_freecad_type("PartDesign::PolarPattern") == ("PATTERN", 1084)
    assert fcstd.map_freecad_type("App::Part") == ("GROUP", 1104)
    assert fcstd.map_freecad_type("TechDraw::DrawPage") == ("ANALYSIS", 1232)
    assert fcstd.map_freecad_type("App::FeaturePython") == ("UNKNOWN", None)
    assert fcstd.map_freecad_type("App::FeaturePython", "draftobjects.array.Array") == ("PATTERN", 1084)
