"""How a model writes an image into the token sequence; pure data the service and the model share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageTokens:
    """An image becomes text_before + [begin] + [image] * per_image + [end] + text_after.

    The image ids' embeddings are replaced by the vision tower's output; the text around the span is what the
    checkpoint's processor writes (Gemma 3: a blank line on each side).
    """

    begin_id: int
    image_id: int
    end_id: int
    per_image: int
    image_size: int              # the vision tower's input side, in pixels
    text_before: str = ""
    text_after: str = ""

    def span(self) -> list[int]:
        return [self.begin_id, *[self.image_id] * self.per_image, self.end_id]
