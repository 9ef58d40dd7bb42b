"""Packaging for profilestream.

setup.py (rather than a pyproject build backend) because Beam's DataflowRunner ships a job's code to its workers
with `--setup_file`: every package the pipeline runs goes with its data files, and tools/ stays out (README,
"Deploying to Dataflow" and "Code layout").
"""

from pathlib import Path

from setuptools import find_packages, setup

# Every contract and data file the pipeline reads at run time: the vendored XDM schemas (schemas/xdm/**, with their
# LICENSES/ and NOTICE.md), the ingestion-schema contract files, the sample stream and the example configuration.
# Listed here rather than in a MANIFEST.in so that sdist, wheel and Dataflow's --setup_file all agree.
SHIPPED_PACKAGES = (
    "core",
    "schemas",
    "identity",
    "profiles",
    "stores",
    "messages",
    "lake",
    "privacy",
    "transforms",
    "pipelines",
    "service",
)
DATA_FILES = [f"**/*.{ext}" for ext in ("json", "jsonl", "md", "txt", "yaml", "toml")]
CONSOLE_FILES = [f"console/*.{ext}" for ext in ("html", "js", "css")]

setup(
    name="profilestream",
    version="0.1.0",
    description="Streaming customer-profile pipeline on Apache Beam: XDM ingestion, identity stitching, "
    "real-time profiles and a Parquet lake",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Every package the pipeline runs; not tools/, a distribution of its own (tools/pyproject.toml).
    packages=find_packages(include=[f"{package}*" for package in SHIPPED_PACKAGES]),
    # The console's page and assets (service/console/), which `serve` sends as they are.
    package_data={"schemas": DATA_FILES, "pipelines": DATA_FILES, "service": CONSOLE_FILES},
    install_requires=[
        # Beam 2.77.0 is the newest on PyPI. Beam's Flink job-server jar
        # (org.apache.beam:beam-runners-flink-<1.19|1.20|2.0>-job-server) was checked with `mvn dependency:get` on
        # this machine for Beam 2.77.0, 2.75, 2.74, 2.73, 2.72, 2.70, 2.68, 2.65, 2.61, 2.60 and 2.56 and resolved
        # for none of them, so the pin is the newest Beam rather than the newest with a resolvable job server; the
        # Flink issue must build or find its job server another way.
        "apache-beam[gcp]==2.77.0",
        "fastavro>=1.13",
        "pyarrow>=25.0",
        "google-cloud-pubsub>=2.44",
        "jsonschema>=4.26",  # `profilestream validate --conformance`
        "pyyaml>=6.0",
        "orjson>=3.10",  # canonical JSON of profiles, rewritten at every flush
        "phonenumbers>=9.0",  # identity normalisation: phones to E.164
        "fastapi>=0.165",  # `profilestream serve`: the HTTP Profile Access API
        "fastapi-offline>=1.7",  # Swagger UI's assets for /docs, served from the package rather than a CDN
        "uvicorn>=0.54",
        "httpx2>=2.16",  # `profilestream loadgen` posting to the inlet; FastAPI's TestClient in the tests
    ],
    extras_require={
        "test": [
            "pytest>=9.2",
            "pytest-xdist>=3.8",
            "hypothesis>=6.170",
            "duckdb>=2.0",
            "setuptools>=70.1",  # builds the wheel (bdist_wheel) the Dataflow package test checks, with no download
            "redis>=5.0",  # the identity store's contract tests run against a real redis-server
            "google-cloud-bigtable>=2.50",  # the profile store's contract tests run against the Bigtable emulator
            "selenium>=4.40",  # the browser end-to-end test drives Debian's chromium through its chromedriver
            # Capped at the minor: `ruff format --check` runs in CI, and ruff changes its formatting style only in
            # minor releases, so a fresh clone must not pick up a new style the code was never formatted with.
            "ruff>=0.17,<0.18",
        ],
        "redis": ["redis>=5.0"],
        "bigtable": ["google-cloud-bigtable>=2.50"],
    },
    entry_points={"console_scripts": ["profilestream = pipelines.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Programming Language :: Python :: 3.11"],
)
