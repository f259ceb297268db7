"""Optional parts of runform-cds: checked before a command that needs them starts.

``pip install runform-cds`` is the CDS Hooks service, the rule tools and the
audit trail; ``runform-cds[measure]`` adds the video stack (MediaPipe, OpenCV,
SciPy, NumPy, Matplotlib, tqdm) that ``measure`` and ``retrain`` run on.
"""

from __future__ import annotations

from importlib import import_module

from cds.errors import MissingExtraError

__all__ = ["VIDEO_STACK", "require_video_stack"]

#: import name -> distribution, for the message
VIDEO_STACK = {
    "numpy": "numpy",
    "scipy": "scipy",
    "cv2": "opencv-contrib-python",
    "mediapipe": "mediapipe",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
}


def require_video_stack(command: str) -> None:
    """Raise :class:`MissingExtraError` unless every part of the video stack imports."""
    failed = []
    for module, dist in VIDEO_STACK.items():
        try:
            import_module(module)
        except ImportError as exc:  # absent, or present without its system libraries
            failed.append(f"{dist} ({exc})")
    if failed:
        raise MissingExtraError(
            f"`runform-cds {command}` needs the video stack, and this did not load: "
            f"{'; '.join(failed)}. Install it with: pip install 'runform-cds[measure]'"
        )
