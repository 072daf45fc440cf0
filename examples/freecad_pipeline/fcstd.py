"""Parse FreeCAD ``.FCStd`` documents into the pipeline's ``serialized_content`` dict.

An FCStd file is a zip archive. Its ``Document.xml`` member lists every object
of the document under ``<Objects>`` and stores each object's properties under
``<ObjectData>``. This module reads only ``Document.xml``. The B-rep files,
``GuiDocument.xml`` and thumbnails in the same archive are referenced by name
but never opened. It does no database access: the caller writes the result.

``Document.xml`` is parsed with ``defusedxml``, which rejects any DTD, entity
declaration or external reference. Documents saved by FreeCAD 0.14 to 1.2
contain none of these, so their presence marks a hostile or foreign file,
reported as ``unsafe_xml``.

Every damaged input raises :class:`FCStdError` with one of the kinds in
:data:`ERROR_KINDS`. A missing or unreadable file raises the usual ``OSError``.

Each object becomes one feature. Its FreeCAD type is mapped onto the Creo
feature type names and ids that the pipeline already stores, using
:data:`PYTHON_CLASS_TYPE_MAP`, then :data:`FREECAD_TYPE_MAP`, then
:data:`FREECAD_TYPE_PREFIX_MAP`. The rules for element trees and the quality
counts are in :func:`extract_element_tree` and :func:`compute_quality`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

logger = logging.getLogger(__name__)

DOCUMENT_MEMBER = "Document.xml"

# Guard against zip bombs. The largest Document.xml among 87 public FreeCAD
# documents was 3.3 MB, so this leaves a wide margin for real files.
DEFAULT_MAX_DOCUMENT_BYTES = 128 * 1024 * 1024

ERROR_KINDS = frozenset({"bad_zip", "missing_document_xml", "malformed_xml", "unsafe_xml", "too_large"})

UNKNOWN_TYPE = "UNKNOWN"
GROUP_TYPE_ID = 1104
# Non-geometric features: 1232 ANALYSIS and 1085 MEASURE. Neither counts
# towards element coverage.
ANALYSIS_TYPE_IDS = frozenset({1232, 1085})

# Pipeline type names and Creo type ids, as the pipeline stores them.
PROTRUSION = ("PROTRUSION", 917)
CUT = ("CUT", 918)
HOLE = ("HOLE", 919)
ROUND = ("ROUND", 920)
CHAMFER = ("CHAMFER", 921)
DRAFT = ("DRAFT", 922)
DATUM_PLANE = ("DATUM_PLANE", 923)
DATUM_AXIS = ("DATUM_AXIS", 924)
DATUM_POINT = ("DATUM_POINT", 925)
REVOLVE = ("REVOLVE", 942)
SWEEP = ("SWEEP", 942)
CURVE = ("CURVE", 946)
SKETCH = ("SKETCH", 949)
CSYS = ("CSYS", 979)
COPY_GEOM = ("COPY_GEOM", 989)
PATTERN = ("PATTERN", 1084)
MEASURE = ("MEASURE", 1085)
GROUP = ("GROUP", GROUP_TYPE_ID)
ANALYSIS = ("ANALYSIS", 1232)
SURFACE = ("SURFACE", 1243)
# Creo feature names that have no id in the pipeline's list of type ids.
# Features of these types are known (not unknown) but get type_id None.
COMPONENT = ("COMPONENT", None)
SHELL = ("SHELL", None)

FREECAD_TYPE_MAP: dict[str, tuple[str, int | None]] = {
    # Material added to a solid: pads, additive primitives, extrusions, unions.
    "PartDesign::Pad": PROTRUSION,
    "PartDesign::AdditiveBox": PROTRUSION,
    "PartDesign::AdditiveCylinder": PROTRUSION,
    "PartDesign::AdditiveSphere": PROTRUSION,
    "PartDesign::AdditiveCone": PROTRUSION,
    "PartDesign::AdditiveEllipsoid": PROTRUSION,
    "PartDesign::AdditiveTorus": PROTRUSION,
    "PartDesign::AdditivePrism": PROTRUSION,
    "PartDesign::AdditiveWedge": PROTRUSION,
    # NOTE: PartDesign::Boolean can also cut or intersect. The operation is an
    # enumeration index in its Type property, which this map does not read.
    "PartDesign::Boolean": PROTRUSION,
    "Part::Extrusion": PROTRUSION,
    "Part::Box": PROTRUSION,
    "Part::Cylinder": PROTRUSION,
    "Part::Sphere": PROTRUSION,
    "Part::Cone": PROTRUSION,
    "Part::Torus": PROTRUSION,
    "Part::Prism": PROTRUSION,
    "Part::Wedge": PROTRUSION,
    "Part::Ellipsoid": PROTRUSION,
    "Part::Fuse": PROTRUSION,
    "Part::MultiFuse": PROTRUSION,
    # Material removed: pockets, subtractive primitives, cuts, intersections.
    "PartDesign::Pocket": CUT,
    "PartDesign::SubtractiveBox": CUT,
    "PartDesign::SubtractiveCylinder": CUT,
    "PartDesign::SubtractiveSphere": CUT,
    "PartDesign::SubtractiveCone": CUT,
    "PartDesign::SubtractiveEllipsoid": CUT,
    "PartDesign::SubtractiveTorus": CUT,
    "PartDesign::SubtractivePrism": CUT,
    "PartDesign::SubtractiveWedge": CUT,
    "Part::Cut": CUT,
    "Part::Common": CUT,
    "Part::MultiCommon": CUT,
    "PartDesign::Hole": HOLE,
    "PartDesign::Fillet": ROUND,
    "Part::Fillet": ROUND,
    "PartDesign::Chamfer": CHAMFER,
    "Part::Chamfer": CHAMFER,
    "PartDesign::Draft": DRAFT,
    "PartDesign::Thickness": SHELL,
    "Part::Thickness": SHELL,
    # Datums. App::Plane, App::Line and App::Point are the members of an App::Origin.
    "App::Plane": DATUM_PLANE,
    "PartDesign::Plane": DATUM_PLANE,
    "Part::DatumPlane": DATUM_PLANE,
    "App::Line": DATUM_AXIS,
    "PartDesign::Line": DATUM_AXIS,
    "Part::DatumLine": DATUM_AXIS,
    "App::Point": DATUM_POINT,
    "PartDesign::Point": DATUM_POINT,
    "Part::DatumPoint": DATUM_POINT,
    "Part::Vertex": DATUM_POINT,
    "PartDesign::CoordinateSystem": CSYS,
    "Part::LocalCoordinateSystem": CSYS,
    # Revolved, swept and lofted solids share id 942 in the pipeline's list.
    "PartDesign::Revolution": REVOLVE,
    "PartDesign::Groove": REVOLVE,
    "Part::Revolution": REVOLVE,
    "PartDesign::AdditivePipe": SWEEP,
    "PartDesign::SubtractivePipe": SWEEP,
    "PartDesign::AdditiveLoft": SWEEP,
    "PartDesign::SubtractiveLoft": SWEEP,
    "PartDesign::AdditiveHelix": SWEEP,
    "PartDesign::SubtractiveHelix": SWEEP,
    "Part::Sweep": SWEEP,
    "Part::Loft": SWEEP,
    # Curves and 2D objects. Part::Part2DObjectPython is the base of Draft's 2D objects.
    "Part::Helix": CURVE,
    "Part::Spiral": CURVE,
    "Part::Circle": CURVE,
    "Part::Ellipse": CURVE,
    "Part::Line": CURVE,
    "Part::Polygon": CURVE,
    "Part::RegularPolygon": CURVE,
    "Part::Part2DObject": CURVE,
    "Part::Part2DObjectPython": CURVE,
    "Part::Face": SURFACE,
    "Part::Plane": SURFACE,
    "Part::RuledSurface": SURFACE,
    "Sketcher::SketchObject": SKETCH,
    "Sketcher::SketchObjectPython": SKETCH,
    # Shapes copied from elsewhere or stored without history: a plain
    # Part::Feature holds only its B-rep.
    "Part::Feature": COPY_GEOM,
    "PartDesign::FeatureBase": COPY_GEOM,
    "PartDesign::ShapeBinder": COPY_GEOM,
    "PartDesign::SubShapeBinder": COPY_GEOM,
    "PartDesign::LinearPattern": PATTERN,
    "PartDesign::PolarPattern": PATTERN,
    "PartDesign::Mirrored": PATTERN,
    "PartDesign::MultiTransform": PATTERN,
    "PartDesign::Scaled": PATTERN,
    "Part::Mirroring": PATTERN,
    # Containers. They hold other features and carry little data of their own.
    "App::Part": GROUP,
    "App::Origin": GROUP,
    "App::DocumentObjectGroup": GROUP,
    "App::DocumentObjectGroupPython": GROUP,
    "App::LinkGroup": GROUP,
    "PartDesign::Body": GROUP,
    "Part::Compound": GROUP,
    "Assembly::AssemblyObject": GROUP,
    "Assembly::JointGroup": GROUP,
    "Assembly::ViewGroup": GROUP,
    "Assembly::BomGroup": GROUP,
    # Instances of other objects or documents, as placed in an assembly.
    "App::Link": COMPONENT,
    "App::LinkElement": COMPONENT,
    "Assembly::AssemblyLink": COMPONENT,
    # Non-geometric objects.
    "Spreadsheet::Sheet": ANALYSIS,
    "App::VarSet": ANALYSIS,
    "App::MaterialObject": ANALYSIS,
    "App::MaterialObjectPython": ANALYSIS,
    "App::MeasureDistance": MEASURE,
}

# Whole workbenches whose objects are mapped alike. Drawing sheets and their
# views document a model but carry no model geometry.
FREECAD_TYPE_PREFIX_MAP: tuple[tuple[str, tuple[str, int | None]], ...] = (
    ("TechDraw::", ANALYSIS),
    ("Drawing::", ANALYSIS),
    ("Measure::", MEASURE),
)

# Python features ("module.class" of their Proxy) whose meaning is known.
# Only objects with an App::PropertyPythonObject named Proxy are looked up here.
PYTHON_CLASS_TYPE_MAP: dict[str, tuple[str, int | None]] = {
    # Draft workbench: the draftobjects package and the Draft module of older releases.
    "draftobjects.wire.Wire": CURVE,
    "Draft._Wire": CURVE,
    "draftobjects.bspline.BSpline": CURVE,
    "Draft._BSpline": CURVE,
    "draftobjects.point.Point": DATUM_POINT,
    "Draft._Point": DATUM_POINT,
    "draftobjects.array.Array": PATTERN,
    "Draft._Array": PATTERN,
    "draftobjects.clone.Clone": COPY_GEOM,
    "Draft._Clone": COPY_GEOM,
    # Parts imported into an assembly by A2plus and by assembly2.
    "a2p_importedPart_class.Proxy_importPart": COMPONENT,
    "importPart.Proxy_importPart": COMPONENT,
    # Assembly3 containers.
    "freecad.asm3.assembly.Assembly": GROUP,
    "freecad.asm3.assembly.AsmPartGroup": GROUP,
    "freecad.asm3.assembly.AsmConstraintGroup": GROUP,
    "freecad.asm3.assembly.AsmElementGroup": GROUP,
}

# FreeCAD types and Python modules that only assembly workbenches create.
ASSEMBLY_OBJECT_TYPES = frozenset({"App::Link", "App::LinkElement", "App::LinkGroup"})
ASSEMBLY_TYPE_PREFIXES = ("Assembly::",)
ASSEMBLY_PYTHON_MODULE_PREFIXES = (
    "a2p",  # A2plus
    "importPart",  # assembly2
    "assembly2lib",  # assembly2
    "freecad.asm3",  # Assembly3
    "JointObject",  # Assembly workbench of FreeCAD 1.0
)

# Properties every document object has. They name or display the object and
# do not describe its geometry, so they are not elements.
BOOKKEEPING_PROPERTIES = frozenset({"Label", "Label2", "Visibility", "ExpressionEngine", "Proxy"})

# Link-list properties that name the members of a container.
GROUP_MEMBER_PROPERTIES = ("Group", "OriginFeatures", "Links", "ElementList")

# Document properties copied into metadata, under snake_case keys.
DOCUMENT_METADATA_PROPERTIES = {
    "Label": "label",
    "CreatedBy": "created_by",
    "CreationDate": "creation_date",
    "LastModifiedBy": "last_modified_by",
    "LastModifiedDate": "last_modified_date",
    "Company": "company",
    "Comment": "comment",
    "License": "license",
    "Uid": "uid",
}


class FCStdError(ValueError):
    """A damaged or unsafe FCStd file.

    ``kind`` is one of :data:`ERROR_KINDS`: ``bad_zip`` (not a readable zip
    archive), ``missing_document_xml``, ``malformed_xml`` (Document.xml is not
    well-formed or is not a FreeCAD document), ``unsafe_xml`` (a DTD, entity or
    external reference) or ``too_large`` (Document.xml exceeds the size limit).
    """

    def __init__(self, reason: str, kind: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"invalid FCStdError kind {kind!r}, expected one of {sorted(ERROR_KINDS)}")
        super().__init__(reason)
        self.reason = reason
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.reason} [{self.kind}]"


@dataclass(frozen=True)
class ParsedModel:
    """One parsed FCStd document and the row columns derived from it.

    ``content`` is the ``serialized_content`` dict and is JSON-serializable
    with ``allow_nan=False``. ``quality`` is the same dict as
    ``content["serialization_quality"]``.
    """

    content: dict[str, Any]
    model_type: str
    feature_count: int
    feature_types: list[str]
    quality: dict[str, Any]


def parse_fcstd(path: Path, *, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> ParsedModel:
    """Read an FCStd file and build its ``serialized_content`` and row columns.

    ``feature_count`` is the number of ``<Object>`` entries in ``<Objects>``.
    ``model_type`` is ``"assembly"`` when the document contains App::Link
    objects or objects of an assembly workbench (Assembly, Assembly3, A2plus,
    assembly2), else ``"part"``. Assembly4 places its parts with App::Link, so
    its assemblies count through that rule.

    Raises FCStdError for a damaged or unsafe file, and OSError when the file
    cannot be opened at all.
    """
    path = Path(path)
    size_bytes, sha256 = _hash_file(path)
    document_xml = _read_document_xml(path, max_document_bytes)
    root = _parse_document_xml(document_xml, path)

    content = build_serialized_content(root, model_name=path.stem)
    content["metadata"].update(
        {
            "file_name": path.name,
            "file_size_bytes": size_bytes,
            "sha256": sha256,
            "document_xml_bytes": len(document_xml),
        }
    )

    features = content["features"]
    feature_types = sorted({feature["type"] for feature in features})
    model_type = "assembly" if _is_assembly(features) else "part"
    logger.debug(
        "parsed %s: %d features, model_type=%s, coverage=%s",
        path.name,
        len(features),
        model_type,
        content["serialization_quality"]["element_coverage"],
    )
    return ParsedModel(
        content=content,
        model_type=model_type,
        feature_count=len(features),
        feature_types=feature_types,
        quality=content["serialization_quality"],
    )


def map_freecad_type(freecad_type: str, python_class: str | None = None) -> tuple[str, int | None]:
    """Return the pipeline type name and Creo type id for a FreeCAD object type.

    ``python_class`` is ``"module.class"`` of the object's Python proxy, if it
    has one, and takes precedence. An unmapped type returns
    ``(UNKNOWN_TYPE, None)``. Mapped types can also have id None (COMPONENT, SHELL).
    """
    if python_class is not None and python_class in PYTHON_CLASS_TYPE_MAP:
        return PYTHON_CLASS_TYPE_MAP[python_class]
    if freecad_type in FREECAD_TYPE_MAP:
        return FREECAD_TYPE_MAP[freecad_type]
    for prefix, mapped in FREECAD_TYPE_PREFIX_MAP:
        if freecad_type.startswith(prefix):
            return mapped
    return (UNKNOWN_TYPE, None)


def build_serialized_content(root: Element, model_name: str) -> dict[str, Any]:
    """Build ``serialized_content`` from a parsed ``<Document>`` element.

    Each feature's ``status`` is ``"valid"``, ``"touched"`` or ``"invalid"``,
    from the flags of its ``<Objects>`` entry. File-level metadata (size,
    hash) is left to the caller. Raises
    FCStdError(kind="malformed_xml") when the ``<Objects>`` section is missing.
    """
    objects_section = root.find("Objects")
    if objects_section is None:
        raise FCStdError(f"{model_name}: Document.xml has no <Objects> section", "malformed_xml")

    object_data = _index_object_data(root.find("ObjectData"), model_name)
    features: list[dict[str, Any]] = []
    sketches: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    parameters: dict[str, Any] = {}
    relations: list[dict[str, Any]] = []

    entries = [entry for entry in objects_section if entry.tag == "Object"]
    for position, entry in enumerate(entries, start=1):
        name = entry.get("name", "")
        freecad_type = entry.get("type", "")
        reading = extract_element_tree(object_data.get(name), name)
        type_name, type_id = map_freecad_type(freecad_type, reading.python_class)

        features.append(
            {
                # Documents saved by FreeCAD 0.18 and older store no object ids.
                # Their features get their 1-based position in <Objects> instead.
                "id": _parse_int(entry.get("id"), default=position),
                "name": name,
                "label": reading.label,
                "type": type_name,
                "type_id": type_id,
                "freecad_type": freecad_type,
                "python_class": reading.python_class,
                "element_tree": {"elements": reading.elements, "element_count": len(reading.elements)},
                "references": reading.references,
                "feature_geometry": reading.placement,
                "status": _object_status(entry),
            }
        )
        relations.extend({"feature": name, **expression} for expression in reading.expressions)
        if type_id == GROUP_TYPE_ID:
            groups.append({"name": name, "freecad_type": freecad_type, "members": reading.group_members})
        if reading.sketch is not None or type_name == SKETCH[0]:
            counts = reading.sketch or {"geometry_count": None, "constraint_count": None}
            sketches.append({"name": name, **counts})
        for key, cell in reading.cells.items():
            parameters[f"{name}.{key}"] = cell

    return {
        "model_name": model_name,
        "features": features,
        "sketches": sketches,
        "groups": groups,
        "parameters": parameters,
        "relations": relations,
        "metadata": _document_metadata(root),
        "serialization_quality": compute_quality(features),
    }


@dataclass
class ObjectReading:
    """Elements, references and side data read from one ``<ObjectData>/<Object>`` entry.

    ``sketch`` is set only for objects with Sketcher geometry or constraint
    lists. ``cells`` maps a spreadsheet alias, or a cell address where there
    is no alias, to the cell's content.
    """

    label: str | None = None
    python_class: str | None = None
    elements: list[dict[str, Any]] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    placement: dict[str, Any] | None = None
    expressions: list[dict[str, Any]] = field(default_factory=list)
    group_members: list[str] = field(default_factory=list)
    sketch: dict[str, Any] | None = None
    cells: dict[str, Any] = field(default_factory=dict)


def extract_element_tree(object_element: Element | None, object_name: str) -> ObjectReading:
    """Turn the properties of one object into elements, references and side data.

    Every saved ``<Property>`` with a value becomes an element
    ``{name, type, value}``, except three kinds. Bookkeeping properties
    (:data:`BOOKKEEPING_PROPERTIES`) are skipped. App::PropertyPythonObject
    values are opaque (pickled or JSON state of a Python class), so they are
    skipped too. The ExpressionEngine goes to ``expressions`` instead.
    Transient ``<_Property>`` entries carry no value and are ignored.

    References are the object names of every Link, LinkSub, LinkList,
    LinkSubList, XLink and XLinkSubList value, in document order, without
    duplicates or the object itself. A link into another document is written as
    ``"file#object"``. ``placement`` is the value of the Placement property.
    """
    if object_element is None:
        return ObjectReading()

    reading = ObjectReading()
    seen_references: set[str] = {object_name, ""}
    properties = object_element.find("Properties")
    if properties is None:
        return reading

    for prop in properties:
        if prop.tag != "Property":
            continue
        value_nodes = list(prop)
        if not value_nodes:
            continue
        prop_name = prop.get("name", "")
        prop_type = prop.get("type", "")
        primary = value_nodes[0]

        if primary.tag == "Python":
            if prop_name == "Proxy":
                reading.python_class = _python_class(primary)
            continue
        if primary.tag == "ExpressionEngine":
            reading.expressions.extend(_decode_expressions(primary))
            continue
        if prop_name in BOOKKEEPING_PROPERTIES:
            if prop_name == "Label" and primary.tag == "String":
                reading.label = primary.get("value")
            continue

        value = _decode_property_value(value_nodes)
        reading.elements.append({"name": prop_name, "type": prop_type, "value": value})

        for reference in _linked_object_names(primary):
            if reference not in seen_references:
                seen_references.add(reference)
                reading.references.append(reference)
        if prop_name == "Placement" and primary.tag == "PropertyPlacement":
            reading.placement = value
        if prop_name in GROUP_MEMBER_PROPERTIES and primary.tag == "LinkList":
            reading.group_members.extend(value)
        if primary.tag in ("GeometryList", "ConstraintList"):
            reading.sketch = reading.sketch or {"geometry_count": None, "constraint_count": None}
            key = "geometry_count" if primary.tag == "GeometryList" else "constraint_count"
            reading.sketch[key] = value["count"]
        if primary.tag == "Cells":
            reading.cells.update(_decode_cells(primary))

    return reading


def compute_quality(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Compute ``serialization_quality`` from the feature list.

    A feature has elements when its element tree is not empty. Groups (type id
    1104) and analysis features (ids in :data:`ANALYSIS_TYPE_IDS`) are not
    meaningful. ``element_coverage`` is the percentage (0-100, two decimals)
    of meaningful features with elements, and None when there are no
    meaningful features. An UNKNOWN feature is ``recoverable_unknown`` when it
    has at least one element and ``unrecoverable_unknown`` otherwise. The
    latter covers an object without an ObjectData entry and a Python feature
    whose only data is its opaque proxy state.
    """
    with_elements = 0
    group_features = 0
    analysis_features = 0
    meaningful = 0
    meaningful_with_elements = 0
    recoverable_unknown = 0
    unrecoverable_unknown = 0

    for feature in features:
        has_elements = feature["element_tree"]["element_count"] > 0
        with_elements += has_elements
        type_id = feature["type_id"]
        if type_id == GROUP_TYPE_ID:
            group_features += 1
            continue
        if type_id in ANALYSIS_TYPE_IDS:
            analysis_features += 1
            continue

        meaningful += 1
        meaningful_with_elements += has_elements
        if feature["type"] == UNKNOWN_TYPE:
            if has_elements:
                recoverable_unknown += 1
            else:
                unrecoverable_unknown += 1

    coverage = round(100.0 * meaningful_with_elements / meaningful, 2) if meaningful else None
    return {
        "total_features": len(features),
        "features_with_elements": with_elements,
        "element_coverage": coverage,
        "meaningful_features": meaningful,
        "group_features": group_features,
        "analysis_features": analysis_features,
        "recoverable_unknown": recoverable_unknown,
        "unrecoverable_unknown": unrecoverable_unknown,
    }


# Reading the archive and the XML


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _read_document_xml(path: Path, max_document_bytes: int) -> bytes:
    """Return the bytes of Document.xml, reading at most ``max_document_bytes + 1``.

    The size in the zip header is checked first but not trusted, because a
    crafted archive can understate it.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(DOCUMENT_MEMBER)
            except KeyError:
                raise FCStdError(
                    f"{path.name}: the archive contains no {DOCUMENT_MEMBER}, so it is not a "
                    f"complete FreeCAD document. Re-save it from FreeCAD.",
                    "missing_document_xml",
                ) from None
            if info.file_size > max_document_bytes:
                raise _too_large(path, info.file_size, max_document_bytes)
            with archive.open(info) as member:
                data = member.read(max_document_bytes + 1)
    except FCStdError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: encrypted member. NotImplementedError: unsupported compression.
        raise FCStdError(
            f"{path.name}: not a readable zip archive ({exc}). The file is truncated, "
            f"corrupt or not an FCStd document.",
            "bad_zip",
        ) from exc

    if len(data) > max_document_bytes:
        raise _too_large(path, len(data), max_document_bytes)
    return data


def _too_large(path: Path, size: int, limit: int) -> FCStdError:
    return FCStdError(
        f"{path.name}: {DOCUMENT_MEMBER} is larger than the limit of {limit} bytes "
        f"(at least {size} bytes). Raise max_document_bytes if the file is trusted.",
        "too_large",
    )


def _parse_document_xml(data: bytes, path: Path) -> Element:
    try:
        root = defusedxml.ElementTree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise FCStdError(
            f"{path.name}: {DOCUMENT_MEMBER} contains a DTD, entity declaration or external "
            f"reference ({type(exc).__name__}). FreeCAD does not write these, so the file was rejected.",
            "unsafe_xml",
        ) from exc
    except ParseError as exc:
        raise FCStdError(
            f"{path.name}: {DOCUMENT_MEMBER} is not well-formed XML ({exc}). The document is truncated or corrupt.",
            "malformed_xml",
        ) from exc

    if root.tag != "Document":
        raise FCStdError(
            f"{path.name}: the root element of {DOCUMENT_MEMBER} is <{root.tag}>, expected <Document>",
            "malformed_xml",
        )
    return root


def _index_object_data(object_data: Element | None, model_name: str) -> dict[str, Element]:
    index: dict[str, Element] = {}
    if object_data is None:
        return index
    for entry in object_data:
        if entry.tag != "Object":
            continue
        name = entry.get("name", "")
        if name in index:
            logger.warning("%s: duplicate ObjectData entry for object %r, keeping the first", model_name, name)
            continue
        index[name] = entry
    return index


def _document_metadata(root: Element) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "program_version": root.get("ProgramVersion"),
        "schema_version": _parse_int(root.get("SchemaVersion"), default=None),
        "file_version": _parse_int(root.get("FileVersion"), default=None),
    }
    properties = root.find("Properties")
    if properties is None:
        return metadata
    for prop in properties:
        key = DOCUMENT_METADATA_PROPERTIES.get(prop.get("name", ""))
        if prop.tag != "Property" or key is None or len(prop) == 0:
            continue
        # Empty strings are FreeCAD's default for unset fields.
        metadata[key] = prop[0].get("value") or None
    return metadata


def _object_status(entry: Element) -> str:
    """Return ``"invalid"``, ``"touched"`` or ``"valid"`` for one ``<Objects>/<Object>`` entry.

    FreeCAD marks an object whose last recompute failed with ``Invalid="1"``
    and one that needs a recompute with ``Touched="1"``. An object with both
    flags is ``"invalid"``.

    NOTE: none of the checked documents saved before FreeCAD 0.18 carries
    either flag, so for those files ``"valid"`` may only mean that no flag was
    saved.
    """
    if entry.get("Invalid") == "1":
        return "invalid"
    if entry.get("Touched") == "1":
        return "touched"
    return "valid"


def _is_assembly(features: list[dict[str, Any]]) -> bool:
    for feature in features:
        freecad_type = feature["freecad_type"]
        if freecad_type in ASSEMBLY_OBJECT_TYPES or freecad_type.startswith(ASSEMBLY_TYPE_PREFIXES):
            return True
        python_class = feature["python_class"]
        if python_class is not None and python_class.startswith(ASSEMBLY_PYTHON_MODULE_PREFIXES):
            return True
    return False


# Property values


def _decode_property_value(value_nodes: list[Element]) -> Any:
    """Decode the value element(s) of one property into JSON-compatible data.

    An enumeration saved with its own list of names (``CustomEnumList``)
    decodes to the selected name. Other enumerations decode to their index,
    because the names live in FreeCAD's source code, not in the file.
    """
    primary = value_nodes[0]
    if primary.tag == "Integer" and len(value_nodes) > 1 and value_nodes[1].tag == "CustomEnumList":
        index = _parse_int(primary.get("value"), default=None)
        names = [enum.get("value") for enum in value_nodes[1]]
        if isinstance(index, int) and 0 <= index < len(names):
            return names[index]
        return index
    decoder = _VALUE_DECODERS.get(primary.tag, _decode_generic)
    return decoder(primary)


def _decode_generic(node: Element) -> Any:
    """Decode an element without a dedicated decoder.

    A lone ``value`` attribute decodes to its string. A list whose items carry
    ``value`` or ``v`` decodes to a list of strings. Anything else decodes to
    its attributes, plus ``item_count`` when it has child elements.
    """
    children = list(node)
    attributes = dict(node.attrib)
    if not children and set(attributes) == {"value"}:
        return attributes["value"]
    if children and all(("value" in child.attrib) or ("v" in child.attrib) for child in children):
        return [child.get("value", child.get("v")) for child in children]
    if children:
        attributes["item_count"] = len(children)
    return attributes


def _decode_bool(node: Element) -> bool:
    return node.get("value", "").lower() in ("true", "1")


def _decode_int(node: Element) -> int | str | None:
    return _parse_int(node.get("value"), default=node.get("value"))


def _decode_float(node: Element) -> float | str | None:
    return _parse_float(node.get("value"))


def _decode_string(node: Element) -> str | None:
    return node.get("value")


def _decode_link(node: Element) -> str | None:
    return node.get("value") or None


def _decode_link_sub(node: Element) -> dict[str, Any]:
    return {
        "object": node.get("value") or None,
        "subelements": [sub.get("value", "") for sub in node if sub.tag == "Sub"],
    }


def _decode_link_list(node: Element) -> list[str]:
    return [link.get("value", "") for link in node if link.tag == "Link"]


def _decode_link_sub_list(node: Element) -> list[dict[str, Any]]:
    return [
        {"object": link.get("obj") or None, "subelement": link.get("sub", "")} for link in node if link.tag == "Link"
    ]


def _decode_xlink(node: Element) -> dict[str, Any]:
    subelements = [sub.get("value", "") for sub in node if sub.tag == "Sub"]
    if node.get("sub"):
        subelements.insert(0, node.get("sub", ""))
    return {"object": node.get("name") or None, "file": node.get("file") or None, "subelements": subelements}


def _decode_xlink_list(node: Element) -> list[dict[str, Any]]:
    return [_decode_xlink(link) for link in node if link.tag == "XLink"]


def _decode_placement(node: Element) -> dict[str, Any]:
    """Decode a placement: position in mm, rotation as quaternion (x, y, z, w).

    Files saved by FreeCAD 0.17 and newer also store the rotation as axis and
    angle in radians.
    """
    placement: dict[str, Any] = {
        "position": [_parse_float(node.get(key)) for key in ("Px", "Py", "Pz")],
        "rotation": [_parse_float(node.get(key)) for key in ("Q0", "Q1", "Q2", "Q3")],
    }
    if node.get("A") is not None:
        placement["axis"] = [_parse_float(node.get(key)) for key in ("Ox", "Oy", "Oz")]
        placement["angle_rad"] = _parse_float(node.get("A"))
    return placement


def _decode_vector(node: Element) -> list[float | str | None]:
    return [_parse_float(node.get(key)) for key in ("valueX", "valueY", "valueZ")]


def _decode_matrix(node: Element) -> list[float | str | None]:
    return [_parse_float(node.get(f"a{row}{column}")) for row in range(1, 5) for column in range(1, 5)]


def _decode_map(node: Element) -> dict[str, str]:
    return {item.get("key", ""): item.get("value", "") for item in node if item.tag == "Item"}


def _decode_counted_list(node: Element) -> dict[str, Any]:
    """Decode a Sketcher geometry or constraint list to its item count."""
    count = _parse_int(node.get("count"), default=None)
    return {"count": count if isinstance(count, int) else len(node)}


def _decode_cells_summary(node: Element) -> dict[str, int]:
    return {"cell_count": sum(1 for cell in node if cell.tag == "Cell")}


def _decode_file_reference(node: Element) -> dict[str, Any]:
    return {"file": node.get("file") or None}


_VALUE_DECODERS: dict[str, Callable[[Element], Any]] = {
    "Bool": _decode_bool,
    "Integer": _decode_int,
    "Float": _decode_float,
    "String": _decode_string,
    "Uuid": _decode_string,
    "PropertyColor": _decode_int,
    "Link": _decode_link,
    "LinkSub": _decode_link_sub,
    "LinkList": _decode_link_list,
    "LinkSubList": _decode_link_sub_list,
    "XLink": _decode_xlink,
    "XLinkSubList": _decode_xlink_list,
    "PropertyPlacement": _decode_placement,
    "PropertyVector": _decode_vector,
    "PropertyMatrix": _decode_matrix,
    "Map": _decode_map,
    "GeometryList": _decode_counted_list,
    "ConstraintList": _decode_counted_list,
    "Cells": _decode_cells_summary,
    # Shapes and meshes are separate archive members. The value is the member name.
    "Part": _decode_file_reference,
    "Mesh": _decode_file_reference,
}


def _linked_object_names(node: Element) -> list[str]:
    tag = node.tag
    if tag in ("Link", "LinkSub"):
        return [node.get("value", "")]
    if tag == "LinkList":
        return [link.get("value", "") for link in node if link.tag == "Link"]
    if tag == "LinkSubList":
        return [link.get("obj", "") for link in node if link.tag == "Link"]
    if tag == "XLink":
        return [_xlink_target(node)]
    if tag == "XLinkSubList":
        return [_xlink_target(link) for link in node if link.tag == "XLink"]
    return []


def _xlink_target(node: Element) -> str:
    name = node.get("name", "")
    external_file = node.get("file", "")
    if name and external_file:
        return f"{external_file}#{name}"
    return name


def _python_class(node: Element) -> str | None:
    module = node.get("module")
    class_name = node.get("class")
    if module and class_name:
        return f"{module}.{class_name}"
    return class_name or module or None


def _decode_expressions(node: Element) -> list[dict[str, Any]]:
    return [
        {"path": expression.get("path", ""), "expression": expression.get("expression", "")}
        for expression in node
        if expression.tag == "Expression"
    ]


def _decode_cells(node: Element) -> dict[str, dict[str, Any]]:
    """Map each spreadsheet cell to its content, keyed by alias or address.

    ``Sheet.alias`` and ``Sheet.B2`` are also how FreeCAD expressions refer to
    a cell, so the caller's ``"<sheet>.<key>"`` keys match the relations.
    """
    cells: dict[str, dict[str, Any]] = {}
    for cell in node:
        if cell.tag != "Cell":
            continue
        address = cell.get("address", "")
        alias = cell.get("alias")
        entry: dict[str, Any] = {"cell": address, "content": cell.get("content")}
        if alias:
            entry["alias"] = alias
        if cell.get("displayUnit"):
            entry["unit"] = cell.get("displayUnit")
        cells[alias or address] = entry
    return cells


# Scalar parsing


def _parse_int(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        return default


def _parse_float(text: str | None) -> float | str | None:
    """Parse a float attribute. Non-finite or unparsable text stays a string.

    PostgreSQL's JSONB rejects NaN and Infinity, so they cannot be floats here.
    """
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text
