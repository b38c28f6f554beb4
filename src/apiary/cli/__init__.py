"""apiary.cli"""
