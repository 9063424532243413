#!/usr/bin/env python3
"""Independent checks of the relay's SIEM formats, for tests/formats.rs.

    siem_check.py cef FILE    parse each line with pycef (PyPI), print one JSON object per line
    siem_check.py leef FILE   parse each line as LEEF 2.0 per IBM's LEEF guide, print JSON
    siem_check.py ocsf FILE   validate each line against the published OCSF schema (the
                              api_activity class of OCSF 1.1.0 and 1.8.0, via ocsf-json-schema
                              and jsonschema from PyPI); print "ok N" or the errors, exit 1

None of this shares code with the relay: it is what a SIEM-side consumer would run.
"""
import json
import sys


def cef(path):
    import pycef
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        values = pycef.parse(line)
        if values is None:
            print(f"pycef could not parse: {line[:200]}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps(values))


def leef(path):
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.rstrip("\n")
        at = line.find("LEEF:")
        if at < 0:
            print(f"line {n}: no LEEF header", file=sys.stderr)
            sys.exit(1)
        syslog, body = line[:at], line[at:]
        # LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|attributes
        parts = body.split("|", 6)
        if len(parts) != 7 or parts[0] != "LEEF:2.0":
            print(f"line {n}: not a LEEF 2.0 header: {body[:200]}", file=sys.stderr)
            sys.exit(1)
        delimiter = parts[5]
        if delimiter.lower().startswith(("0x", "x")):
            delimiter = chr(int(delimiter.lower().lstrip("0").lstrip("x"), 16))
        if len(delimiter) != 1:
            print(f"line {n}: delimiter {parts[5]!r} is not one character", file=sys.stderr)
            sys.exit(1)
        attributes = {}
        for pair in parts[6].split(delimiter):
            if "=" not in pair:
                print(f"line {n}: attribute without '=': {pair[:100]!r}", file=sys.stderr)
                sys.exit(1)
            key, value = pair.split("=", 1)
            if key in attributes:
                print(f"line {n}: attribute {key} twice", file=sys.stderr)
                sys.exit(1)
            attributes[key] = value
        print(json.dumps({
            "syslog": syslog.strip(), "version": "2.0", "vendor": parts[1], "product": parts[2],
            "product_version": parts[3], "event_id": parts[4], "delimiter": delimiter,
            "attributes": attributes,
        }))


def ocsf(path):
    from jsonschema import Draft202012Validator
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema
    validators = {}
    for version in ("1.1.0", "1.8.0"):
        schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        name = schema.lookup_class_name_from_uid(class_uid=6003)
        validators[version] = Draft202012Validator(schema.get_class_schema(class_name=name, profiles=[]))
    count, failed = 0, 0
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        event = json.loads(line)
        count += 1
        for version, validator in validators.items():
            for error in validator.iter_errors(event):
                failed += 1
                where = "/".join(str(p) for p in error.absolute_path)
                print(f"line {n} (OCSF {version}) at /{where}: {error.message}", file=sys.stderr)
    if failed:
        sys.exit(1)
    print(f"ok {count}")


if __name__ == "__main__":
    {"cef": cef, "leef": leef, "ocsf": ocsf}[sys.argv[1]](sys.argv[2])
