"""apiary.datapath"""
