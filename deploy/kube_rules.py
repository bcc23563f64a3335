"""What a real Kubernetes API server does to an update, for the fake in helm_render.py.

Helm's Upgrade action (client-side apply, its default) GETs each live object, computes a three-way
strategic merge patch (old manifest, new manifest, live object) and PATCHes it; with server-side
apply it sends the whole object as an apply patch; `--force` PUTs. A real API server applies the
patch and then validates the *update* against the stored object, refusing fields that may not
change. A fake that accepts any PATCH lets an upgrade through that a cluster refuses (issue 19:
`helm upgrade --set config.logLevel=DEBUG` changed a Job's pod template, which a cluster refuses).

This module holds:
- `apply_patch`: the three patch types Helm sends, applied as the API server applies them
  (strategic merge patch with the merge keys of the kinds this chart renders; JSON merge patch,
  RFC 7386, for custom resources; server-side apply approximated as "the applied object wins",
  which is what it does when Helm is the only field manager).
- `validate_create` / `validate_update`: the refusals of the real API for the kinds this chart
  renders, each rule naming its source in Kubernetes' validation code (v1.33,
  pkg/apis/*/validation/validation.go) or API documentation.

What it does not do (a cluster still can refuse what this accepts): defaulting (a real server adds
fields such as a Job's generated selector or a PVC template's volumeMode), admission webhooks,
quota, and any rule for a kind or field not listed here. The rules are tested to refuse a planted
violation each (tests/deploy/test_chart_upgrade.py), so they can fail.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

# ---------------------------------------------------------------------------------------------
# Strategic merge patch (k8s.io/apimachinery/pkg/util/strategicpatch), for the built-in kinds.
# Merge keys are the `patchMergeKey` struct tags of k8s.io/api (core/v1 types.go, apps/v1):
# a list field with a merge key is merged item by item; any other list is replaced whole.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",            # PodSpec.Containers  patchStrategy=merge, patchMergeKey=name
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",               # PodSpec.Volumes     patchStrategy=merge,retainKeys
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "schedulingGates": "name",
    "topologySpreadConstraints": "topologyKey",
    "env": "name",                   # Container.Env       patchStrategy=merge, patchMergeKey=name
    "volumeMounts": "mountPath",     # Container.VolumeMounts
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",        # ObjectMeta.OwnerReferences
    "conditions": "type",
}
# `ports` depends on where it is: ServiceSpec.Ports merges by port, Container.Ports by containerPort.
_PORT_KEY = {"service": "port", "container": "containerPort"}


def _merge_key(field: str, path: tuple[str, ...], kind: str) -> str | None:
    if field == "ports":
        if kind == "Service" and path == ("spec",):
            return _PORT_KEY["service"]
        if path and path[-1] in ("containers", "initContainers", "ephemeralContainers"):
            return _PORT_KEY["container"]
        return None
    return _MERGE_KEYS.get(field)


def _smp(live: Any, patch: Any, path: tuple[str, ...], kind: str) -> Any:
    if not isinstance(patch, dict) or not isinstance(live, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = copy.deepcopy(live)
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            out[field] = [x for x in out.get(field) or [] if x not in value]
            continue
        if value is None:
            out.pop(key, None)
            continue
        mk = _merge_key(key, path, kind) if isinstance(value, list) else None
        if mk is not None:
            out[key] = _merge_list(out.get(key) or [], value, mk, path + (key,), kind)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = _smp(out[key], value, path + (key,), kind)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = copy.deepcopy(_strip_directives(value))
    for field, order in orders.items():
        mk = _merge_key(field, path, kind)
        if mk is None or not isinstance(out.get(field), list):
            continue
        rank = {json.dumps(o.get(mk) if isinstance(o, dict) else o): i for i, o in enumerate(order)}
        out[field] = sorted(out[field], key=lambda item: rank.get(
            json.dumps(item.get(mk) if isinstance(item, dict) else item), len(rank)))
    if retain is not None:
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(live: list[Any], patch: list[Any], mk: str, path: tuple[str, ...], kind: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip_directives(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    out = copy.deepcopy(live)
    for item in patch:
        if not isinstance(item, dict):
            if item not in out:
                out.append(item)
            continue
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(mk) == item.get(mk)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = _smp(out[idx], item, path, kind)
    return out


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _json_merge(live: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(live) if isinstance(live, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _json_merge(out.get(key), value)
    return out


def apply_patch(live: dict[str, Any], patch: dict[str, Any], content_type: str, kind: str) -> dict[str, Any]:
    """The object an API server stores after this patch (before validation)."""
    ct = content_type.split(";")[0].strip()
    if ct == "application/strategic-merge-patch+json":
        result = _smp(live, patch, (), kind)
    elif ct == "application/merge-patch+json":
        result = _json_merge(live, patch)
    elif ct == "application/apply-patch+yaml":
        # Server-side apply with one field manager: the applied configuration is the object; what
        # the server owns (identity, status) stays.
        result = copy.deepcopy(patch)
        result.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            if k in live.get("metadata", {}):
                result["metadata"].setdefault(k, live["metadata"][k])
        if "status" in live and "status" not in result:
            result["status"] = copy.deepcopy(live["status"])
    elif ct == "application/json-patch+json":
        raise ValueError("JSON patch (RFC 6902) is not served by this fake: Helm does not send it")
    else:
        raise ValueError(f"unsupported patch type {content_type!r}")
    return result


# ---------------------------------------------------------------------------------------------
# Validation. Each rule: (source, check). A check returns error strings in the API server's words.

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Name rules on create. Sources: apimachinery/pkg/api/validation/generic.go NameIsDNSSubdomain
# (most kinds, <= 253); core/validation ValidateServiceName (DNS-1035 label, <= 63);
# batch/validation ValidateCronJob (<= 52: "must be no more than 52 characters", the Job names
# it creates add 11); batch/validation ValidateJob (the name becomes the `job-name` and
# `batch.kubernetes.io/job-name` label values of its pods, so <= 63, label-value syntax);
# core/validation ValidateNamespaceName, ValidateConfigMap/Secret keys (IsConfigMapKey).
_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "Service": (_DNS1035_LABEL, 63, "a DNS-1035 label"),
    "Namespace": (_DNS1123_LABEL, 63, "a DNS-1123 label"),
    "CronJob": (_DNS1123_SUBDOMAIN, 52, "a DNS-1123 subdomain of at most 52 characters"),
    "Job": (_DNS1123_LABEL, 63, "usable as a label value (the pods' job-name label), at most 63 characters"),
    # apps/validation ValidateStatefulSetName: a DNS-1123 label (its pods' hostnames).
    "StatefulSet": (_DNS1123_LABEL, 63, "a DNS-1123 label"),
}


def validate_create(obj: dict[str, Any]) -> list[str]:
    kind = obj.get("kind", "")
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    errors: list[str] = []
    pattern, limit, what = _NAME_RULES.get(kind, (_DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain"))
    if kind == "Secret" and name.startswith("sh.helm.release."):
        pattern, limit = _DNS1123_SUBDOMAIN, 253
    if len(name) > limit or not pattern.match(name):
        errors.append(f'metadata.name: Invalid value: "{name}": must be {what} (at most {limit} characters)')
    # apimachinery/pkg/apis/meta/v1/validation ValidateLabels: values <= 63, label syntax.
    for where, labels in _all_label_maps(obj):
        for k, v in (labels or {}).items():
            if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
                errors.append(f'{where}: Invalid value: "{v}": a label value must be 63 characters or '
                              f"less and start and end with an alphanumeric character ({k})")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        # apps/validation ValidateDeploymentSpec etc.: "selector does not match template labels".
        sel = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        tpl = (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        if sel and any(tpl.get(k) != v for k, v in sel.items()):
            errors.append("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`")
    return errors


def _all_label_maps(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("metadata.labels", (obj.get("metadata") or {}).get("labels") or {})]
    spec = obj.get("spec") or {}
    if isinstance(spec.get("template"), dict):
        out.append(("spec.template.metadata.labels", (spec["template"].get("metadata") or {}).get("labels") or {}))
    if isinstance(spec.get("jobTemplate"), dict):
        jt = spec["jobTemplate"].get("spec") or {}
        out.append(("spec.jobTemplate.spec.template.metadata.labels",
                    ((jt.get("template") or {}).get("metadata") or {}).get("labels") or {}))
    return out


def _changed(old: Any, new: Any) -> bool:
    return json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True)


def _immutable(old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
    o, n = old, new
    for part in path.split("."):
        o = o.get(part) if isinstance(o, dict) else None
        n = n.get(part) if isinstance(n, dict) else None
    return [f"{path}: Invalid value: field is immutable"] if _changed(o, n) else []


# StatefulSet: apps/validation ValidateStatefulSetUpdate (v1.33) — the message names the fields
# that may change; everything else in spec (serviceName, volumeClaimTemplates, selector,
# podManagementPolicy) is refused.
STATEFULSET_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
                       "persistentVolumeClaimRetentionPolicy", "minReadySeconds")


def _statefulset(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    o = {k: v for k, v in (old.get("spec") or {}).items() if k not in STATEFULSET_MUTABLE}
    n = {k: v for k, v in (new.get("spec") or {}).items() if k not in STATEFULSET_MUTABLE}
    if _changed(o, n):
        fields = sorted(k for k in set(o) | set(n) if _changed(o.get(k), n.get(k)))
        return ["spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                "'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' "
                f"and 'minReadySeconds' are forbidden (changed: {', '.join(fields)})"]
    return []


def _job(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # batch/validation ValidateJobSpecUpdate: selector, template (outside the narrow cases of a
    # suspended Job's scheduling directives, which this chart never uses), completionMode,
    # podFailurePolicy, backoffLimitPerIndex are immutable; completions too unless elastic
    # Indexed.
    errors: list[str] = []
    for field in ("spec.selector", "spec.template", "spec.completionMode", "spec.podFailurePolicy",
                  "spec.backoffLimitPerIndex", "spec.completions"):
        errors += _immutable(old, new, field)
    return errors


def _pod(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # core/validation ValidatePodUpdate: only container images, activeDeadlineSeconds,
    # terminationGracePeriodSeconds (to -1... rarely) and added tolerations may change.
    def scrub(spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec or {})
        for c in spec.get("containers") or []:
            c.pop("image", None)
        for c in spec.get("initContainers") or []:
            c.pop("image", None)
        for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
            spec.pop(k, None)
        return spec

    if _changed(scrub(old.get("spec")), scrub(new.get("spec"))):
        return ["spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
                "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only "
                "additions to existing tolerations), `spec.terminationGracePeriodSeconds`"]
    return []


def _service(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # core/validation ValidateServiceUpdate: clusterIP(s) immutable once allocated, unless the
    # type changes to/from ExternalName.
    if "ExternalName" in ((old.get("spec") or {}).get("type"), (new.get("spec") or {}).get("type")):
        return []
    old_ip = (old.get("spec") or {}).get("clusterIP")
    if old_ip in (None, ""):
        return []
    return _immutable(old, new, "spec.clusterIP") + (
        _immutable(old, new, "spec.clusterIPs") if (old.get("spec") or {}).get("clusterIPs") else [])


def _pvc(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # core/validation ValidatePersistentVolumeClaimUpdate: "spec is immutable after creation
    # except resources.requests and volumeAttributesClassName for bound claims", and the
    # requested storage may not shrink ("field can not be less than previous value").
    bound = (old.get("status") or {}).get("phase") == "Bound"

    def scrub(spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec or {})
        if bound:
            (spec.get("resources") or {}).pop("requests", None)
            spec.pop("volumeAttributesClassName", None)
        return spec

    if _changed(scrub(old.get("spec")), scrub(new.get("spec"))):
        return ["spec: Forbidden: spec is immutable after creation except resources.requests and "
                "volumeAttributesClassName for bound claims"]
    before = (((old.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    after = (((new.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    if before and after and quantity_bytes(after) < quantity_bytes(before):
        return ["spec.resources.requests.storage: Forbidden: field can not be less than previous value"]
    return []


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_bytes(q: str | int) -> int:
    """A Kubernetes quantity (binary or decimal suffix) in bytes, rounded up."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGTPE]i|[kMGTPE])?", str(q))
    if not m:
        raise ValueError(f"not a quantity this fake reads: {q!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    return int(-(-value // 1))


def canonical_quantity(q: str | int) -> str:
    """How the API server stores a quantity: the largest binary suffix that divides it (for the
    binary forms), e.g. 2048Mi -> 2Gi."""
    n = quantity_bytes(q)
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if n and n % _UNITS[suffix] == 0:
            return f"{n // _UNITS[suffix]}{suffix}"
    return str(n)


def _selector_only(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # apps/validation ValidateDeploymentUpdate / ValidateDaemonSetUpdate / ValidateReplicaSetUpdate
    # (apps/v1): "spec.selector: field is immutable".
    return _immutable(old, new, "spec.selector")


def _immutable_data(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # core/validation ValidateSecretUpdate / ValidateConfigMapUpdate: `immutable: true` freezes
    # data and cannot be unset; a Secret's type never changes.
    if old.get("kind") == "Secret" and (old.get("type") or "Opaque") != (new.get("type") or "Opaque"):
        return ["type: Invalid value: field is immutable"]
    if not old.get("immutable"):
        return []
    errors = _immutable(old, new, "data") + _immutable(old, new, "immutable")
    return errors + (_immutable(old, new, "stringData") if "stringData" in new else [])


UPDATE_RULES = {
    "StatefulSet": _statefulset,
    "Job": _job,
    "Pod": _pod,
    "Service": _service,
    "PersistentVolumeClaim": _pvc,
    "Deployment": _selector_only,
    "DaemonSet": _selector_only,
    "ReplicaSet": _selector_only,
    "Secret": _immutable_data,
    "ConfigMap": _immutable_data,
}


def validate_update(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    kind = old.get("kind") or new.get("kind") or ""
    errors: list[str] = []
    if (new.get("metadata") or {}).get("name") != (old.get("metadata") or {}).get("name"):
        errors.append("metadata.name: Invalid value: field is immutable")
    rule = UPDATE_RULES.get(kind)
    if rule:
        errors += rule(old, new)
    errors += [e for e in validate_create(new) if not e.startswith("metadata.name")]
    return errors
