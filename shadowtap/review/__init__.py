"""The blind review page over a data directory's review queue (`shadowtap review`)."""

from shadowtap.review.app import ReviewApp, create_review_app
from shadowtap.review.queue import CALIBRATION, THUMBS_DOWN, QueueItem, ReviewQueue, build_queue

__all__ = [
    "CALIBRATION",
    "THUMBS_DOWN",
    "QueueItem",
    "ReviewApp",
    "ReviewQueue",
    "build_queue",
    "create_review_app",
]
