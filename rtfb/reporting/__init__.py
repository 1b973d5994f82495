"""HTML and figure helpers shared by the session report, the offline report and the dashboard.

Below all three users: it imports nothing else from rtfb. matplotlib is imported only when a
figure is made.
"""

from .figures import CONDITION_PALETTE, condition_colors, new_figure, png_uri
from .html import REPORT_CSS, esc, fmt_sig, img, note, section

__all__ = ["CONDITION_PALETTE", "REPORT_CSS", "condition_colors", "esc", "fmt_sig", "img",
           "new_figure", "note", "png_uri", "section"]
