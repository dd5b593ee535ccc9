"""Remote converters: Luxonis' blobconverter (RVC2/RVC3 blobs) and HubAI (RVC2/3/4).

Both are services: they need their SDK (a package), HubAI an API key (``HUBAI_API_KEY``)
and a platform, and both the network. Each missing piece is checked before anything is
sent, and a missing one (or an unreachable service) is a :class:`ConverterError` with one
line naming what is missing; ConvertOnTrainEnd logs it and keeps the ONNX and archive it
already produced. Settings come from ``exporter.blobconverter`` / ``exporter.hubai``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from callbacks.converters import Conversion, ConversionJob, ConverterError, register_converter
from callbacks.export import mean_scale

__all__ = ["BlobconverterConverter", "HubAIConverter"]


def _sdk(module: str, package: str, who: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConverterError(
            f"{who}: the {package} package is not installed (pip install {package})"
        ) from None


@register_converter("blobconverter")
class BlobconverterConverter:
    """A Myriad X ``.blob`` through ``blobconverter.from_onnx`` (shaves, version, data type
    from ``exporter.blobconverter``; mean / scale / channel order from the export)."""

    name = "blobconverter"

    def convert(self, job: ConversionJob) -> Conversion:
        blobconverter = _sdk("blobconverter", "blobconverter", self.name)
        settings, exporter = job.config.exporter.blobconverter, job.config.exporter
        params: list[str] = []
        if job.sample is not None and job.sample.ndim == 4:
            mean, scale = mean_scale(job.config, int(job.sample.shape[1]))
            params += [f"--mean_values=[{','.join(map(str, mean))}]",
                       f"--scale_values=[{','.join(map(str, scale))}]"]  # fmt: skip
        if exporter.reverse_input_channels:
            params.append("--reverse_input_channels")
        try:
            path = blobconverter.from_onnx(
                model=str(job.onnx_path), data_type=settings.data_type, shaves=settings.shaves,
                version=settings.version, optimizer_params=params, output_dir=str(job.out_dir),
                use_cache=False,
            )  # fmt: skip
        except Exception as exc:  # the service or the network: say which, keep going
            raise ConverterError(
                f"{self.name}: the conversion service failed or is unreachable "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return Conversion(self.name, Path(path), "blob")


@register_converter("hubai")
class HubAIConverter:
    """A device model through Luxonis HubAI: uploads the NN Archive for
    ``exporter.hubai.platform`` with ``hubai_sdk.HubAIClient(api_key).convert.<PLATFORM>``."""

    name = "hubai"

    def convert(self, job: ConversionJob) -> Conversion:
        sdk = _sdk("hubai_sdk", "hubai-sdk", self.name)
        key = os.environ.get("HUBAI_API_KEY")
        if not key:
            raise ConverterError(f"{self.name}: the HUBAI_API_KEY environment variable is not set")
        platform = job.config.exporter.hubai.platform
        if platform is None:
            raise ConverterError(
                f"{self.name}: exporter.hubai.platform is not set (rvc2, rvc3 or rvc4)"
            )
        if job.archive_path is None:
            raise ConverterError(f"{self.name}: no NN Archive to upload")
        try:
            client = sdk.HubAIClient(api_key=key)
            convert = getattr(client.convert, platform.upper())
            response = convert(path=str(job.archive_path), name=job.onnx_path.stem)
        except Exception as exc:
            raise ConverterError(
                f"{self.name}: the HubAI service failed or is unreachable "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        path = getattr(response, "downloaded_path", None) or getattr(response, "path", None)
        if path is None:
            raise ConverterError(f"{self.name}: HubAI returned no converted model ({response!r})")
        return Conversion(self.name, Path(path), f"hubai-{platform}")
