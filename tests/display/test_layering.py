"""rtfb.display imports nothing from rtfb but the message schema and its signature check
(rtfb.feedback.messages, rtfb.feedback.signing) and the shared helpers below every layer
(rtfb._utils), and PsychoPy lazily."""

import ast
import subprocess
import sys
from pathlib import Path

import rtfb.display

DISPLAY = Path(rtfb.display.__file__).parent


def test_display_imports_only_feedback_messages():
    offenders = []
    for path in sorted(DISPLAY.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside rtfb.display only
                    if node.level > 1:
                        offenders.append((path.name, "." * node.level + (node.module or "")))
                    continue
                names = [node.module]
            else:
                continue
            for name in names:
                if (name == "rtfb" or name.startswith("rtfb.")) \
                        and name not in ("rtfb.feedback.messages", "rtfb.feedback.signing") \
                        and not name.startswith("rtfb._utils."):
                    offenders.append((path.name, name))
    assert not offenders


def test_psychopy_imported_lazily():
    code = ("import sys, rtfb.display, rtfb.display.psychopy_display;"
            "print('psychopy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
