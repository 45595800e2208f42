"""The gateway's request limits: one object built from the settings, used for every check,
and returned to callers by ``GetModelInfo``. Every refusal names the field and the limit."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vaegan.errors import InvalidInput


@dataclass(frozen=True)
class Limits:
    max_items: int  # embeddings / images / samples / keyframes / analogy terms per request
    max_image_bytes: int
    max_image_pixels: int
    max_request_pixels: int  # all images of one request together
    max_steps: int  # interpolation frames between two keyframes
    max_frames: int  # frames of a whole interpolation path
    max_message_bytes: int
    max_stream_pending: int  # GenerateStream messages in progress at once, per stream
    max_stream_message_bytes: int

    @classmethod
    def from_settings(cls, settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def items(self, n: int, field: str, *, least: int = 1) -> None:
        """``n`` items of ``field``: at least ``least``, at most ``max_items``."""
        if n < least:
            need = "at least one is required" if least == 1 else f"at least {least} are needed"
            raise InvalidInput(f"{field}: {need} ({n} given)")
        if n > self.max_items:
            raise InvalidInput(f"{field}: {n} given; at most {self.max_items} per request")

    def image_bytes(self, n: int, field: str) -> None:
        if n > self.max_image_bytes:
            raise InvalidInput(f"{field}: {n} bytes; at most {self.max_image_bytes} per image")

    def request_pixels(self, n: int, field: str) -> None:
        if n > self.max_request_pixels:
            raise InvalidInput(
                f"{field}: {n} pixels in all; at most {self.max_request_pixels} per request"
            )

    def path(self, keyframes: int, steps: int) -> int:
        """The frame count of a path through ``keyframes`` with ``steps`` between each pair."""
        self.items(keyframes, "keyframes", least=2)
        if steps > self.max_steps:
            raise InvalidInput(f"steps: {steps}; at most {self.max_steps}")
        frames = (keyframes - 1) * (steps + 1) + 1
        if frames > self.max_frames:
            raise InvalidInput(
                f"steps: the path would have {frames} frames; at most {self.max_frames}"
            )
        return frames
