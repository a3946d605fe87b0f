"""Validate rendered manifests against the Kubernetes OpenAPI schemas (kubernetes-validate).

Objects of the custom resources this chart renders (ServiceMonitor, ScaledObject,
TriggerAuthentication) have no schema in kubernetes-validate; they are listed as skipped here
and their shape is checked by test_chart.py. Any other kind without a schema is an error.

usage: validate_manifests.py --kube-version 1.25.0 [--kube-version ...] FILE...
"""

import argparse
import sys

import kubernetes_validate
import yaml

CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kube-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    failures = 0
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"{path}: no objects rendered")
            failures += 1
        for doc in docs:
            what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_RESOURCES:
                print(f"{what}: custom resource, schema check skipped (shape tested by pytest)")
                continue
            valid = []
            for version in args.kube_version:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    print(f"{what}: INVALID for Kubernetes {version}: {e.message} at {list(e.path)}")
                    failures += 1
                except kubernetes_validate.SchemaNotFoundError as e:
                    print(f"{what}: no schema for Kubernetes {version}: {e}")
                    failures += 1
                else:
                    valid.append(version)
            if valid:
                print(f"{what}: valid for Kubernetes {', '.join(valid)}")
    if failures:
        print(f"{failures} validation failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
