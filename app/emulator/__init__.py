"""A local stand-in for Vonage Dispatch: accepts workflows, plays them out, calls back."""
