"""apiary.runtime"""
