"""Reading user inputs (images, label maps) and writing scenes."""
