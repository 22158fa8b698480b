"""
Packaging of wsfabric.

The ``twisted.plugins`` package is listed explicitly (with no
``__init__.py`` of our own under ``twisted/``) so that ``twistd`` finds the
``wsfabric``, ``wsfabric-gate`` and ``wsfabric-backend`` plugins after a
plain ``pip install``.
"""

from setuptools import find_packages, setup

setup(
    name="wsfabric",
    version="0.1.0",
    description="Real-time WebSocket systems on Twisted, from one process to a cluster.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["wsfabric", "wsfabric.*"]) + ["twisted.plugins"],
    package_data={"wsfabric": ["static/*", "py.typed", "routing/*.proto", "admin/static/*"]},
    include_package_data=False,
    install_requires=[
        # [tls]: pyOpenSSL and service_identity, for ssl: endpoints and rediss://
        "twisted[tls]>=24.7.0",
        # 26.7.1 fixes the decompression bomb GHSA-hxp9-w8x3-p566.
        "autobahn[twisted]>=26.7.1",
        "txredisapi>=1.6.0",
        # txredisapi's reply parser in C: about 4 x the pub/sub receive rate.
        "hiredis>=2.0",
        "protobuf>=7.35.1",  # the checked-in envelope_pb2.py needs this runtime
        "zope.interface>=6.0",
        # client JWTs (HS256, RS256, ES256); [crypto] brings cryptography
        "pyjwt[crypto]>=2.8",
        # /metrics on the admin listener
        "prometheus_client>=0.20",
        # the WebSocket of wsfabric.client.aio (Autobahn's asyncio side cannot
        # share a process with its Twisted side: txaio picks one framework)
        "websockets>=13.0",
    ],
    extras_require={
        "test": [
            "websockets>=13.0",
            "kosoku==0.1.0",
            "hypothesis>=6.100",
            "psutil>=5.9",
            "playwright>=1.48",
            "ruff>=0.6",
            # regenerates wsfabric/routing/envelope_pb2.py in a test
            "grpcio-tools>=1.85",
            # fuzzes the admin HTTP API against its OpenAPI document
            "schemathesis>=4.0",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3.11",
        "Topic :: Internet :: WWW/HTTP",
    ],
)
